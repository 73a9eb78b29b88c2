// The key a normalised client cache identifies each object type of schema.graphql by, as Apollo
// Client's `typePolicies` (`new InMemoryCache({ typePolicies })`); each type's description in the
// schema states the same key ("Cache key: ..."). tests/clients/test_type_policies.py checks that
// every object type is here, that every key field exists and is non-null, and that no two
// different objects of a real answer share a key.
//
// - A key field must be selected wherever its type is (Apollo refuses to store the object
//   otherwise): `slug` on KpiDefinition, `id` on Incident and Alert, and `kpi { slug }`,
//   `incident { id }` and `timestamp` on KpiObservation.
// - `keyFields: false`: a value with no identity of its own (a summary, a page's edges, a
//   revision), cached inside the object or root field that holds it.
// - `kpi(slug:, asOf:)` answers a past state of the KPI under the same key as its present one:
//   read it with `fetchPolicy: 'no-cache'`, or it overwrites the present state in the cache.
// - Paging `incidents` into one list: `relayStylePagination(['severity', 'detectedFrom',
//   'detectedTo'])` from `@apollo/client/utilities` as the field policy of `Query.incidents`.

// Apollo Client's own types, restated so that this file needs no dependency: the object below is
// assignable to `TypePolicies` from `@apollo/client`.
type KeySpecifier = ReadonlyArray<string | KeySpecifier>;
type TypePolicy = { keyFields: KeySpecifier | false };
type TypePolicies = { readonly [typename: string]: TypePolicy };

// The literal is JSON (the test reads it as such): keep its keys quoted and no trailing commas.
export const typePolicies = {
  "Alert": { "keyFields": ["id"] },
  "BackfillResult": { "keyFields": false },
  "DefinitionsPlan": { "keyFields": false },
  "FieldChange": { "keyFields": false },
  "Incident": { "keyFields": ["id"] },
  "IncidentConnection": { "keyFields": false },
  "IncidentEdge": { "keyFields": false },
  "KpiDefinition": { "keyFields": ["slug"] },
  "KpiObservation": { "keyFields": ["kpi", ["slug"], "incident", ["id"], "timestamp"] },
  "KpiPoint": { "keyFields": false },
  "KpiRecompute": { "keyFields": false },
  "KpiRevision": { "keyFields": false },
  "KpiSummary": { "keyFields": false },
  "KpiTarget": { "keyFields": false },
  "Milestone": { "keyFields": false },
  "PageInfo": { "keyFields": false },
  "PlannedKpi": { "keyFields": false },
  "SurveyResponse": { "keyFields": false },
  "TimelineEvent": { "keyFields": false },
  "Viewer": { "keyFields": false }
} as const satisfies TypePolicies;
