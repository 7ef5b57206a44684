raise RuntimeError("files starting with _ are never imported")
