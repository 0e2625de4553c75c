#!/usr/bin/env python3
"""A folder served over plain HTTP on loopback (a Helm chart repository in tests), kept under
tests. With a third argument `USER:PASSWORD`, any request without that Basic authorization
gets 401, as a private chart repository answers.

    static_http.py PORT FOLDER [USER:PASSWORD]
"""
import base64
import functools
import http.server
import sys

port, folder = int(sys.argv[1]), sys.argv[2]
expected = "Basic " + base64.b64encode(sys.argv[3].encode()).decode() if len(sys.argv) > 3 else None


class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if expected and self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="charts"')
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Handler, directory=folder)).serve_forever()
