"""The KPI registry: definitions, incidents and observations, and the one visibility policy.

The domain of the service. Services take the viewer and apply the policy inside their SQL;
formulas, computed observations, recompute jobs and trends live here, with the tables and the
database access. Nothing here knows HTTP, GraphQL or tokens: `server/` and `schema/` call in.
"""
