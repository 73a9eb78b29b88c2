// The GraphiQL page (server/graphiql.py): starts GraphiQL with a fetcher that sends the token
// written in the Headers tab. Without one it sends nothing (the service would answer 401) and
// says what to do; when the token changes, the schema is fetched again with it.
"use strict";

(function () {
  // The nonce the page's policy allows <style> elements with: GraphiQL's dialogs add one
  // (react-remove-scroll reads it from __webpack_nonce__).
  window.__webpack_nonce__ = document.currentScript.dataset.styleNonce;

  const NO_TOKEN =
    "Every request needs a token: in the Headers tab below, paste it after Bearer " +
    "(mim token --persona admin makes one). The schema is fetched once a token is there.";
  const DEFAULT_HEADERS = '{\n  "Authorization": "Bearer "\n}';
  const DEFAULT_QUERY = [
    "# Paste a token after Bearer in the Headers tab below,",
    "# then run the query with Ctrl-Enter or the run button.",
    "{",
    "  kpis {",
    "    slug",
    "    name",
    "    visibility",
    "  }",
    "}",
    "",
  ].join("\n");
  // Header edits settle for this long before the schema is fetched again.
  const SETTLE_MS = 400;

  // The Authorization header's value when it carries a bearer token, else null.
  function authorization(headers) {
    for (const [name, value] of Object.entries(headers || {})) {
      if (name.toLowerCase() === "authorization" && typeof value === "string") {
        return /^bearer\s+\S+/i.test(value.trim()) ? value.trim() : null;
      }
    }
    return null;
  }

  const http = GraphiQL.createFetcher({
    url: window.location.origin + window.location.pathname,
  });

  function withToken() {
    return function fetcher(params, options) {
      if (authorization(options && options.headers) === null) {
        return Promise.resolve({ errors: [{ message: NO_TOKEN }] });
      }
      return http(params, options);
    };
  }

  function Page() {
    // A new fetcher makes GraphiQL fetch the schema again (with the current headers).
    const [fetcher, setFetcher] = React.useState(withToken);
    const sent = React.useRef(null);
    const timer = React.useRef(null);

    function onEditHeaders(text) {
      window.clearTimeout(timer.current);
      timer.current = window.setTimeout(function () {
        let headers;
        try {
          headers = JSON.parse(text);
        } catch {
          return; // still being written
        }
        const token = authorization(headers);
        if (token !== sent.current) {
          sent.current = token;
          setFetcher(withToken);
        }
      }, SETTLE_MS);
    }

    return React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultQuery: DEFAULT_QUERY,
      defaultHeaders: DEFAULT_HEADERS,
      defaultEditorToolsVisibility: "headers",
      isHeadersEditorEnabled: true,
      // A token is never written to the browser's storage.
      shouldPersistHeaders: false,
      showPersistHeadersSettings: false,
      onEditHeaders: onEditHeaders,
    });
  }

  ReactDOM.createRoot(document.getElementById("graphiql")).render(
    React.createElement(Page),
  );
})();
