raise ImportError("boom at import time")
