#!/usr/bin/env python3
"""Writes the per-kind Argo CD health checks from their templates.

Argo CD loads each kind's Lua script on its own (no shared modules), so the scripts must be
standalone; the logic lives once in templates/ and this script stamps out one file per kind.
`generate.py --check` exits 1 when a checked-in script differs (tests/tests/argocd_health.rs).
restore.lua is written by hand: a Restore's health comes from its phase, not from conditions.
"""
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
KINDS = {
    "policy.lua.in": ["BackupPolicy", "RetentionPolicy", "VerifyPolicy"],
    "status.lua.in": ["Host", "BackupRepository"],
}


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for template, kinds in KINDS.items():
        text = (HERE / "templates" / template).read_text()
        for kind in kinds:
            out = HERE / "health" / f"{kind.lower()}.lua"
            want = text.replace("{{KIND}}", kind)
            if out.exists() and out.read_text() == want:
                continue
            if check:
                stale.append(str(out.relative_to(HERE)))
            else:
                out.write_text(want)
    if stale:
        print("stale (run deploy/argocd/generate.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
