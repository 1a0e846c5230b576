"""Keys, endpoints, errors and retries of the Python SDK."""

from __future__ import annotations

import http.server
import os
import threading
import time
import unittest
from unittest import mock

from support import Made, client, ctl, env, eventually, new_tenant

import isorun
from isorun import Isorun, Sandbox

SECRET = "S3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr3tX"


class CountingServer:
    """A loopback HTTP server that counts requests: proof that none were sent."""

    def __init__(self) -> None:
        counter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                counter.requests += 1
                self.send_response(500)
                self.end_headers()

            do_POST = do_GET  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.requests = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class KeyTest(unittest.TestCase):
    def test_malformed_keys_are_refused_before_any_request(self) -> None:
        server = CountingServer()
        self.addCleanup(server.close)
        live = env("ISORUN_API_KEY")
        live_secret = live.split("_")[3]
        cases = [
            (None, "missing"),
            ("sk_" + live[4:], 'does not start with "isr_"'),
            (live[:-8], "secret is 35 characters, at least 43 expected (a truncated key?)"),
            (f"isr_local_{SECRET}", 'has 3 parts separated by "_", not 4'),
            (f"isr_Local_abc_{SECRET}", "region part must be"),
        ]
        with mock.patch.dict(os.environ, {}, clear=False):
            os.environ.pop("ISORUN_API_KEY", None)
            for key, message in cases:
                with self.subTest(message=message):
                    with self.assertRaises(isorun.ApiKeyError) as caught:
                        Isorun(api_key=key, api_url=server.url)
                    self.assertIn(message, str(caught.exception))
                    self.assertNotIn(live_secret[:20], str(caught.exception))
                    self.assertNotIn(SECRET[:20], str(caught.exception))
                    with self.assertRaises(isorun.ApiKeyError):
                        Sandbox.create(api_key=key, api_url=server.url)
        self.assertEqual(server.requests, 0)
        with self.assertRaises(isorun.IsorunError):
            Isorun(api_key=f"isr_local_abc_{SECRET}", api_url=server.url, max_retries=0).usage()
        self.assertEqual(server.requests, 1)

    def test_endpoint_from_the_region(self) -> None:
        with mock.patch.dict(os.environ, {}, clear=False):
            for name in ("ISORUN_API_URL", "ISORUN_DOMAIN", "ISORUN_PUBLIC_URL"):
                os.environ.pop(name, None)
            self.assertEqual(Isorun(api_key=env("ISORUN_API_KEY")).api_url, "http://127.0.0.1:8080")
            self.assertEqual(Isorun(api_key=f"isr_eu-west-1_abc_{SECRET}").api_url, "https://api.eu-west-1.isorun.dev")
            os.environ["ISORUN_DOMAIN"] = "example.test"
            self.assertEqual(Isorun(api_key=f"isr_us-east-2_abc_{SECRET}").api_url, "https://api.us-east-2.example.test")
            os.environ["ISORUN_API_URL"] = "http://127.0.0.1:9/"
            self.assertEqual(Isorun(api_key=f"isr_eu-west-1_abc_{SECRET}").api_url, "http://127.0.0.1:9")
        self.assertNotIn(env("ISORUN_API_KEY").split("_")[3], repr(client()))

    def test_a_key_of_another_region_is_401(self) -> None:
        _, key = new_tenant("py-region", region="eu-test")
        with self.assertRaises(isorun.AuthenticationError) as caught:
            Isorun(api_key=key, api_url=env("ISORUN_API_URL")).usage()
        self.assertEqual(caught.exception.reason, "KEY_WRONG_REGION")


class ErrorTest(unittest.TestCase):
    def setUp(self) -> None:
        self.made = Made()
        self.addCleanup(self.made.destroy_all)

    def test_revoked_key_is_401_on_the_next_call(self) -> None:
        _, key = new_tenant("py-revoke")
        c = Isorun(api_key=key, api_url=env("ISORUN_API_URL"))
        c.usage()
        ctl("keys", "revoke", c.key_id)
        with self.assertRaises(isorun.AuthenticationError) as caught:
            c.usage()
        error = caught.exception
        self.assertEqual((error.status, error.reason), (401, "KEY_REVOKED"))
        self.assertTrue(str(error).startswith("401 KEY_REVOKED: "))
        self.assertIn(error.raw_body, str(error))

    def test_unpinned_image_is_400(self) -> None:
        with self.assertRaises(isorun.InvalidArgumentError) as caught:
            Sandbox.create("busybox:latest", client=client())
        self.assertEqual(caught.exception.reason, "IMAGE_NOT_PINNED")
        self.assertTrue(str(caught.exception).startswith("400 IMAGE_NOT_PINNED: "))

    def test_connection_failure_names_the_url_and_retries_gets(self) -> None:
        server = CountingServer()
        url = server.url
        server.close()
        retries = []
        c = Isorun(api_key=env("ISORUN_API_KEY"), api_url=url, max_retries=2, retry_base_delay_sec=0.01,
                   on_retry=retries.append)
        with self.assertRaises(isorun.ConnectionError) as caught:
            c.usage()
        self.assertEqual(caught.exception.url, f"{url}/v1/usage")
        self.assertIn(f"{url}/v1/usage", str(caught.exception))
        self.assertEqual(len(retries), 2)

    def test_rate_limit_429_and_a_retry_that_succeeds(self) -> None:
        name, key = new_tenant("py-rate")
        strict = Isorun(api_key=key, api_url=env("ISORUN_API_URL"), max_retries=0)
        strict.usage()
        ctl("tenants", "set-limits", name, "--requests-per-sec", "0.5")
        box = {}

        def refused() -> bool:
            try:
                strict.usage()
                return False
            except isorun.RateLimitError as e:
                box["error"] = e
                return True

        self.assertTrue(eventually(refused, 8), "no 429 after set-limits")
        error = box["error"]
        self.assertEqual((error.status, error.reason), (429, "RATE_LIMIT"))
        self.assertGreaterEqual(error.retry_after_sec, 1)
        self.assertTrue(str(error).startswith("429 RATE_LIMIT: "))
        retries = []
        patient = Isorun(api_key=key, api_url=env("ISORUN_API_URL"), on_retry=retries.append)
        time.sleep(2.1)
        patient.usage()
        started = time.monotonic()
        patient.usage()
        self.assertGreaterEqual(len(retries), 1)
        self.assertIsInstance(retries[0].error, isorun.RateLimitError)
        self.assertGreaterEqual(retries[0].delay_sec, retries[0].error.retry_after_sec)
        self.assertGreaterEqual(time.monotonic() - started, 1.0)

    def test_concurrent_limit_is_not_retried_by_default(self) -> None:
        _, key = new_tenant("py-slots", ("--max-concurrent", "1"))
        retries = []
        c = Isorun(api_key=key, api_url=env("ISORUN_API_URL"), on_retry=retries.append)
        self.made.add(Sandbox.create(client=c))
        with self.assertRaises(isorun.RateLimitError) as caught:
            Sandbox.create(client=c)
        self.assertEqual(caught.exception.reason, "CONCURRENT_SANDBOX_LIMIT")
        self.assertEqual((caught.exception.limit, caught.exception.current), (1, 1))
        self.assertEqual(retries, [])


if __name__ == "__main__":
    unittest.main()
