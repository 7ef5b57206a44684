raise RuntimeError("hidden files are never imported")
