#!/usr/bin/env python3
"""An example Hangar plugin (see docs/plugins.md).

- tool.execute.before: blocks shell commands that delete recursively from the root, and
  pins every shell command to a 300-second timeout by rewriting its arguments;
- tool.execute.after: marks results that mention a leaked secret as errors and redacts them;
- context: tells the model a house rule.
"""
import json
import re
import sys

SECRET = re.compile(r"AKIA[0-9A-Z]{16}")


def answer(msg_id, **fields):
    sys.stdout.write(json.dumps({"id": msg_id, **fields}) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    msg = json.loads(line)
    hook = msg.get("hook")
    if hook == "hello":
        answer(msg["id"], name="guard", hooks=["tool.execute.before", "tool.execute.after", "context"])
    elif hook == "tool.execute.before":
        call = msg["call"]
        if call["name"] == "shell":
            command = call["input"].get("command", "")
            if re.search(r"rm\s+-\w*r\w*\s+/(\s|$)", command):
                answer(msg["id"], decision="block", reason="recursive deletes from / are not allowed")
                continue
            rewritten = dict(call["input"], timeout_secs=300)
            answer(msg["id"], decision="rewrite", input=rewritten)
            continue
        answer(msg["id"], decision="allow")
    elif hook == "tool.execute.after":
        output = msg["result"]["output"]
        if SECRET.search(output):
            answer(msg["id"], result={"output": SECRET.sub("[REDACTED]", output), "is_error": True})
        else:
            answer(msg["id"])
    elif hook == "context":
        answer(msg["id"], context="House rule: run the tests before you say you are done.")
    elif "id" in msg:
        answer(msg["id"])
