"""The Python SDK's main paths against the live cluster (real runc sandboxes where possible)."""

from __future__ import annotations

import os
import time
import unittest
import uuid
from datetime import datetime, timezone

from support import Made, client, eventually, exec_unavailable

import isorun
from isorun import Sandbox

NO_EXEC = exec_unavailable()


class SandboxTest(unittest.TestCase):
    def setUp(self) -> None:
        self.client = client()
        self.made = Made()
        self.addCleanup(self.made.destroy_all)

    def create(self, **options) -> Sandbox:
        return self.made.add(Sandbox.create(client=self.client, **options))

    def test_create_get_refresh_destroy(self) -> None:
        sandbox = self.create(metadata={"suite": "python"}, timeout_sec=120)
        self.assertTrue(sandbox.id.startswith("sbx_"))
        self.assertEqual(sandbox.state, "RUNNING")
        self.assertEqual(sandbox.image, "busybox:1.36")
        self.assertEqual(sandbox.timeout_sec, 120)
        self.assertEqual(sandbox.metadata, {"suite": "python"})
        self.assertIsInstance(sandbox.created_at, datetime)
        self.assertGreater(sandbox.expires_at, datetime.now(timezone.utc))
        self.assertEqual(Sandbox.get(sandbox.id, client=self.client).image_digest, sandbox.image_digest)
        self.assertEqual(sandbox.refresh().state, "RUNNING")
        sandbox.destroy()
        ended = Sandbox.get(sandbox.id, client=self.client)
        self.assertEqual(ended.state, "DESTROYED")
        self.assertEqual(ended.end_reason, "DELETED")
        sandbox.destroy()  # idempotent

    def test_default_client_from_the_environment(self) -> None:
        sandbox = self.made.add(Sandbox.create(timeout_sec=60))
        self.assertEqual(sandbox.client.api_url, os.environ["ISORUN_API_URL"])
        self.assertIs(Sandbox.get(sandbox.id).client, sandbox.client)

    def test_idempotency_key(self) -> None:
        key = f"py-{uuid.uuid4()}"
        self.assertEqual(self.create(idempotency_key=key).id, self.create(idempotency_key=key).id)

    def test_set_timeout(self) -> None:
        sandbox = self.create(timeout_sec=60)
        before = time.time()
        sandbox.set_timeout(3600)
        self.assertEqual(sandbox.timeout_sec, 3600)
        self.assertGreaterEqual(sandbox.expires_at.timestamp(), before + 3590)

    def test_list_walks_every_page(self) -> None:
        suite = f"py-pages-{uuid.uuid4().hex[:8]}"
        ids = sorted(self.create(metadata={"suite": suite}).id for _ in range(5))
        pages = list(Sandbox.pages(metadata={"suite": suite}, page_size=2, client=self.client))
        self.assertEqual([len(p) for p in pages], [2, 2, 1])
        listed = sorted(s.id for s in Sandbox.list(metadata={"suite": suite}, page_size=2, client=self.client))
        self.assertEqual(listed, ids)
        self.assertEqual(list(Sandbox.list(metadata={"suite": suite}, state="DESTROYED", client=self.client)), [])

    def test_hibernate_resume_connect(self) -> None:
        sandbox = self.create()
        sandbox.hibernate()
        self.assertEqual(sandbox.state, "HIBERNATED")
        self.assertIsNone(sandbox.expires_at)
        self.assertEqual(Sandbox.connect(sandbox.id, client=self.client).state, "RUNNING")
        sandbox.hibernate()
        sandbox.resume()
        self.assertEqual(sandbox.state, "RUNNING")

    def test_not_found(self) -> None:
        with self.assertRaises(isorun.NotFoundError) as caught:
            Sandbox.get("sbx_doesnotexist0000", client=self.client)
        self.assertEqual(caught.exception.status, 404)
        self.assertTrue(str(caught.exception).startswith("404 NOT_FOUND: "))
        self.assertTrue(caught.exception.request_id)

    def test_usage_and_url(self) -> None:
        sandbox = self.create()
        usage = self.client.usage()
        self.assertGreaterEqual(usage.active_sandboxes, 1)
        self.assertEqual(usage.limits.max_concurrent, 50)
        local = Sandbox.get(sandbox.id, client=client(public_url="http://127.0.0.1:8081"))
        self.assertEqual(local.url(3000), f"http://3000-{sandbox.public_id}.localhost:8081/")


@unittest.skipIf(NO_EXEC, NO_EXEC)
class ExecTest(unittest.TestCase):
    def setUp(self) -> None:
        self.client = client()
        self.made = Made()
        self.addCleanup(self.made.destroy_all)
        self.sandbox = self.made.add(Sandbox.create(client=self.client))

    def test_exec(self) -> None:
        result = self.sandbox.exec("echo out; echo err >&2; exit 4")
        self.assertEqual((result.exit_code, result.stdout, result.stderr), (4, "out\n", "err\n"))
        r = self.sandbox.exec('echo "$X in $(pwd)"; cat', 10, env={"X": "y"}, cwd="/tmp", stdin="in")
        self.assertEqual(r.stdout, "y in /tmp\nin")

    def test_exec_timeout_is_504_with_the_body(self) -> None:
        with self.assertRaises(isorun.ExecTimeoutError) as caught:
            self.sandbox.exec("sleep 30", 1)
        error = caught.exception
        self.assertEqual((error.status, error.reason), (504, "EXEC_TIMEOUT"))
        self.assertTrue(str(error).startswith("504 EXEC_TIMEOUT: "))
        self.assertIn(isorun.errors.first_bytes(error.raw_body), str(error))
        self.assertIn("exec_stream", str(error))

    def test_hibernated_exec_is_409(self) -> None:
        self.sandbox.hibernate()
        with self.assertRaises(isorun.SandboxNotRunningError) as caught:
            self.sandbox.exec("true")
        self.assertTrue(str(caught.exception).startswith("409 SANDBOX_NOT_RUNNING"))

    def test_exec_stream_calls_back_while_the_command_runs(self) -> None:
        seen = []

        def on_stdout(text: str) -> None:
            seen.append(text)
            if "ready" in text:
                # The command ends only once this file exists: the callback must fire mid-run.
                self.sandbox.exec("touch /tmp/go")

        result = self.sandbox.exec_stream(
            "echo ready; while [ ! -f /tmp/go ]; do sleep 0.05; done; echo done; echo e >&2",
            on_stdout=on_stdout, on_stderr=lambda t: seen.append("err:" + t), timeout_sec=20).wait()
        self.assertEqual(result.exit_code, 0)
        self.assertEqual(result.stdout, "ready\ndone\n")
        self.assertIn("err:e\n", seen)

    def test_exec_stream_iterates_chunks(self) -> None:
        chunks = list(self.sandbox.exec_stream("echo a; echo b >&2"))
        self.assertEqual([(c.stream, c.text) for c in chunks], [("stdout", "a\n"), ("stderr", "b\n")])

    def test_closing_the_stream_kills_the_command(self) -> None:
        stream = self.sandbox.exec_stream("echo started; sleep 283")
        stream_box = {"s": stream}
        with self.assertRaises(isorun.ExecCancelledError):
            for _ in stream:
                stream_box["s"].close()
        self.assertTrue(eventually(lambda: "sleep 283" not in self.sandbox.exec("ps").stdout),
                        "sleep 283 still runs after close()")


if __name__ == "__main__":
    unittest.main()
