"""An HTTP server that answers every GET with a redirect, for the storage tests' check
that model pulls do not follow a redirect to another host.

Usage: redirect_server.py PORT LOCATION
"""

import http.server
import sys


class Redirect(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the standard library's name)
        self.send_response(302)
        self.send_header("Location", sys.argv[2])
        self.send_header("Content-Length", "0")
        self.end_headers()


if __name__ == "__main__":
    http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Redirect).serve_forever()
