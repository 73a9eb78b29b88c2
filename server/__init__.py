"""The KPI source of truth for incident management."""
