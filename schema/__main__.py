"""`python -m schema` prints the schema in SDL; schema.graphql is its checked-in output."""

from schema import schema

print(schema.as_str())
