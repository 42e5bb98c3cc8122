"""A rule-based model of the ring: any interleaving of publishes and reads behaves as the model says.

Invariants checked after every step, for every reader:
- delivered seqs strictly increase;
- delivered + dropped + filtered == cursor - start;
and every read returns exactly what the model predicts (event, exact drop, or nothing).
"""

import os
import uuid

from hypothesis import settings, strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, precondition, rule

from shmring import CaptureSession, Filter, Reader, ReadResult
from shmring.segment import unlink_ring_objects
from tests.conftest import RUN_PREFIX
from tests.procs import make_event

CATEGORIES = ("console", "network", "page")


class RingModel(RuleBasedStateMachine):
    readers = Bundle("readers")

    @initialize(capacity=st.sampled_from([1, 2, 4, 8, 32, 64]))
    def create(self, capacity):
        self.name = f"{RUN_PREFIX}{uuid.uuid4().hex[:10]}"
        self.capacity = capacity
        self.session = CaptureSession.create(self.name, capacity=capacity, data_bytes=1 << 20)
        self.published = []  # category of seq i+1
        self.state = []  # per reader: dict(reader, cursor, categories, seen)

    def latest(self):
        return len(self.published)

    def oldest(self):
        return max(1, self.latest() - self.capacity + 1)

    @rule(category=st.sampled_from(CATEGORIES), count=st.integers(1, 6))
    def publish(self, category, count):
        for _ in range(count):
            env = self.session.publish(make_event(0, category))
            self.published.append(category)
            assert env.seq == self.latest()

    @precondition(lambda self: len(self.state) < 4)
    @rule(cats=st.none() | st.sets(st.sampled_from(CATEGORIES), min_size=1), resume=st.data())
    def attach(self, cats, resume):
        after = resume.draw(st.none() | st.integers(0, self.latest()))
        r = Reader.attach(self.name, after_seq=after, filter=None if cats is None else Filter(categories=cats))
        start = self.latest() if after is None else after
        assert r.cursor == start
        self.state.append(dict(reader=r, cursor=start, start=start, categories=cats, seen=[], resynced_at=None))

    @precondition(lambda self: self.state)
    @rule(which=st.integers(0, 3))
    def read(self, which):
        s = self.state[which % len(self.state)]
        r = s["reader"]
        got = r.read(timeout=0)
        expected = self.predict(s)
        if expected is None:
            assert got is None
        elif expected[0] == "drop":
            first = s["cursor"] + 1  # the model's cursor, before this step
            assert got == ReadResult(dropped=expected[1], dropped_from=first, dropped_to=first + expected[1] - 1)
            s["resynced_at"] = r.cursor
        else:
            expected = expected[1]
            assert got is not None and got.envelope is not None
            assert got.envelope.seq == expected
            assert got.envelope.event.category == self.published[expected - 1]
            s["seen"].append(expected)
        s["cursor"] = r.cursor

    def predict(self, s):
        """The model's next result: ("seq", n), ("drop", count) or None."""
        nxt = s["cursor"] + 1
        if nxt <= self.latest() and nxt < self.oldest():
            resume = self.oldest()
            if s["resynced_at"] is not None and nxt - s["resynced_at"] < self.capacity // 4:
                # lapped again soon after a resync: it skips a sixteenth of the ring further
                resume = min(resume + self.capacity // 16, self.latest() + 1)
            return ("drop", resume - nxt)
        for seq in range(nxt, self.latest() + 1):
            if s["categories"] is None or self.published[seq - 1] in s["categories"]:
                return ("seq", seq)
        return None

    @invariant()
    def accounting(self):
        for s in getattr(self, "state", []):
            r = s["reader"]
            assert r.delivered + r.dropped + r.filtered == r.cursor - s["start"]
            assert s["seen"] == sorted(set(s["seen"]))

    def teardown(self):
        for s in getattr(self, "state", []):
            s["reader"].close()
        if hasattr(self, "session"):
            self.session.close()
            unlink_ring_objects(self.name)


TestRingModel = RingModel.TestCase
TestRingModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


class TestRingModelPurePython(TestRingModel):
    """The same model on the pure-Python reference path."""

    def setUp(self):
        self._pure = os.environ.get("SHMRING_PURE_PYTHON")
        os.environ["SHMRING_PURE_PYTHON"] = "1"

    def tearDown(self):
        if self._pure is None:
            del os.environ["SHMRING_PURE_PYTHON"]
        else:
            os.environ["SHMRING_PURE_PYTHON"] = self._pure
