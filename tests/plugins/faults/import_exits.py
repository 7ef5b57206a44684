import sys

sys.exit("leaving at import")
