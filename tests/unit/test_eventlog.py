"""The per-job event log writes one JSON object a line, whatever the fields hold."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from head_node.eventlog import EventLog

_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3), max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(job_id=st.text(min_size=1), event=st.text(), fields=st.dictionaries(st.text(min_size=1), _VALUES, max_size=5))
def test_every_line_reads_back_as_what_was_recorded(tmp_path_factory, job_id, event, fields):
    fields.pop("time", None), fields.pop("event", None), fields.pop("job_id", None)
    log = EventLog(tmp_path_factory.mktemp("jobs"))
    log.record("j1", event, job_id_echo=job_id, **fields)
    log.record("j1", "finish", status="succeeded")
    events, offset = log.read("j1")
    assert offset == 2
    assert {k: v for k, v in events[0].items() if k != "time"} == {"event": event, "job_id": "j1",
                                                                 "job_id_echo": job_id, **fields}
    assert events[1]["status"] == "succeeded" and isinstance(events[1]["time"], float)
    log.close()


def test_lines_are_what_json_dumps_writes(tmp_path):
    log = EventLog(tmp_path)
    log.record("j1", "assign", task_id='j1."7', attempt=2, provider_id="p\u00e9", ok=True, none=None, x=0.5)
    log.close()
    line = (tmp_path / "j1" / "events.jsonl").read_text()
    got = json.loads(line)
    assert line == json.dumps(got) + "\n"
