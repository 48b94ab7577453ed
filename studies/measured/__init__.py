"""Studies measured on the GPU host (their scripts run there; their summaries run anywhere)."""
