// A frontend's use of the generated documents: a shipped operation sent by its hash alone, typed
// end to end. tests/clients/test_typescript_client.py type-checks it against fresh output.
import type { TypedDocumentNode } from '@graphql-typed-document-node/core';
import { ExecDashboardDocument, KpiTrendDocument } from './src/gql/graphql';

type GraphQLError = { message: string; extensions?: { code?: string } };

export class MimError extends Error {
  constructor(readonly errors: GraphQLError[]) {
    super(errors.map((e) => `${e.extensions?.code}: ${e.message}`).join('; '));
  }
}

// Queries go by GET, so that the browser can revalidate them (ETag, 304); mutations by POST.
export async function run<Result, Variables>(
  document: TypedDocumentNode<Result, Variables>,
  variables: Variables,
  token: string,
  url = '/graphql',
): Promise<Result> {
  const hash = (document as { __meta__?: { hash?: string } }).__meta__?.hash;
  if (hash === undefined) throw new Error('not a persisted document: generate with codegen.ts');
  const extensions = { persistedQuery: { version: 1, sha256Hash: hash } };
  const [operation] = document.definitions;
  const isQuery = operation.kind === 'OperationDefinition' && operation.operation === 'query';
  const headers: Record<string, string> = { Authorization: `Bearer ${token}` };
  let response: Response;
  if (isQuery) {
    const search = new URLSearchParams({
      variables: JSON.stringify(variables ?? {}),
      extensions: JSON.stringify(extensions),
    });
    response = await fetch(`${url}?${search}`, { headers });
  } else {
    headers['Content-Type'] = 'application/json';
    response = await fetch(url, {
      method: 'POST',
      headers,
      body: JSON.stringify({ variables, extensions }),
    });
  }
  const body = (await response.json()) as { data?: Result; errors?: GraphQLError[] };
  if (body.errors?.length) throw new MimError(body.errors);
  return body.data as Result;
}

export async function dashboard(token: string): Promise<string[]> {
  const { kpis } = await run(ExecDashboardDocument, { severity: 'P1' }, token);
  // Root fields are nullable (a failing one is null beside the others' data); run() has thrown
  // on any error, so kpis is here.
  return (kpis ?? []).map((kpi) => `${kpi.name}: ${kpi.summary.value ?? 'no data'} ${kpi.units}`);
}

export async function weeklyMeans(token: string, slug: string): Promise<(number | null)[]> {
  const variables = { slug, bucket: 'WEEK', from: '2026-01-01T00:00:00Z', to: '2026-04-01T00:00:00Z' } as const;
  const { kpi } = await run(KpiTrendDocument, variables, token);
  return kpi?.series.map((point) => point.mean ?? null) ?? [];
}
