"""``python -m dfp_ray.messages FILE...``: validate control-message files without running anything."""
from __future__ import annotations

import sys

from dfp_ray.messages.parser import parse_control_messages


def _main(argv: list[str]) -> int:
    """``python -m dfp_ray.messages FILE...``: validate control-message files, print a summary."""
    if not argv or argv[0] in {"-h", "--help"}:
        print("usage: python -m dfp_ray.messages FILE [FILE...]\n"
              "Validates control-message files; exit code 1 if any message is rejected.")
        return 0 if argv else 2
    rejected = 0
    for name in argv:
        result = parse_control_messages(name)
        for message in result.messages:
            print(f"ok       {message.message_id}: {message.kind}, {message.data_type}, files={message.files}")
        for rejection in result.rejections:
            print(f"REJECTED {rejection}")
        rejected += len(result.rejections)
    return 1 if rejected else 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
