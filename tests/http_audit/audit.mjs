// graphql-http's serverAudits against a running service: `node audit.mjs URL TOKEN`.
// Prints one JSON line per audit: {id, name, level, status, reason}. The token goes on every request.
import { serverAudits } from 'graphql-http';

const [url, token] = process.argv.slice(2);
const fetchFn = (input, init = {}) => {
  const headers = new Headers(init.headers || {});
  headers.set('authorization', `Bearer ${token}`);
  return fetch(input, { ...init, headers });
};

for (const audit of serverAudits({ url, fetchFn })) {
  let result;
  try {
    result = await audit.fn();
  } catch (error) {
    result = { status: 'error', reason: String(error) };
  }
  const level = audit.name.startsWith('MUST') ? 'MUST' : audit.name.startsWith('SHOULD') ? 'SHOULD' : 'MAY';
  console.log(JSON.stringify({ id: audit.id, name: audit.name, level, status: result.status, reason: result.reason || null }));
}
