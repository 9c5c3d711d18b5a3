"""Where sessions' LSTM states (h, C) live between requests: the store interface and its backends."""
