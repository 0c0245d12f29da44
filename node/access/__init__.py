"""Who may do what through the HTTP API and the console: API tokens with roles, and the audit log of mutations."""
