"""Small programs the subprocess tests run with ``sys.executable``."""
