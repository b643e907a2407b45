"""Pure HTTP decisions: routing, header rewriting, error responses (no trio)."""
