"""`sub notebook` and `kubectl open notebook`: the design's notebook loop."""
