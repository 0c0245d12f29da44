"""The web console: server-rendered pages of experiments, templates, the cluster and the audit log."""
