#!/usr/bin/env python3
"""Which tables and indexes a SQLite WAL's frames belong to (issue 9's page
accounting; docs/benchmarks.md, "Where the writer's pages go").

Every commit writes each B-tree page it changed to the WAL whole, so the
frames of a WAL taken during a benchmark show where the store's write
volume goes. Copy the WAL while parleyd runs (it is reset after each
checkpoint and removed at a clean exit), then point this at the copy and at
the database (any later state of it: page numbers are mapped to their
owner with SQLite's dbstat table, so pages that changed owner since are
counted under the new one):

    cp DATA/parley.db-wal /tmp/snap.wal        # during the run
    scripts/wal_frames.py /tmp/snap.wal DATA/parley.db

Prints the valid frames (those since the WAL's last reset), the commits
among them, and the frames per table or index and page type, largest first.
Needs the sqlite3 command-line tool (with dbstat, as Debian's has).
"""
import argparse
import collections
import struct
import subprocess
import sys

WAL_HEADER = struct.Struct(">IIIIIIII")  # magic, version, page size, checkpoint seq, salt-1, salt-2, checksums
FRAME_HEADER = struct.Struct(">IIII")     # page number, db size after commit (0: not a commit), salt-1, salt-2
FRAME_HEADER_SIZE = 24


def frames(wal):
    """(page number, is commit) of each frame written since the last reset."""
    if len(wal) < WAL_HEADER.size:
        sys.exit("not a WAL: shorter than its header")
    magic, _, page_size, _, salt1, salt2, _, _ = WAL_HEADER.unpack_from(wal)
    if magic not in (0x377F0682, 0x377F0683):
        sys.exit("not a WAL: bad magic number")
    off = WAL_HEADER.size
    while off + FRAME_HEADER_SIZE + page_size <= len(wal):
        page, db_size, s1, s2 = FRAME_HEADER.unpack_from(wal, off)
        if (s1, s2) != (salt1, salt2):
            break  # a frame from before the last reset: the valid part ends here
        yield page, db_size != 0
        off += FRAME_HEADER_SIZE + page_size


def owners(db):
    out = subprocess.run(["sqlite3", "-readonly", db, "SELECT pageno, name, pagetype FROM dbstat"],
                         capture_output=True, text=True, check=True).stdout
    table = {}
    for line in out.splitlines():
        page, name, kind = line.split("|")
        table[int(page)] = f"{name} ({kind})"
    return table


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wal", help="a copy of the WAL file")
    ap.add_argument("db", help="the database file")
    args = ap.parse_args()
    with open(args.wal, "rb") as f:
        wal = f.read()
    owner = owners(args.db)
    by_owner = collections.Counter()
    total = commits = 0
    for page, commit in frames(wal):
        total += 1
        commits += commit
        by_owner[owner.get(page, "(page not in the database now)")] += 1
    if total == 0:
        sys.exit("no valid frames: copy the WAL during the run, not after a checkpoint reset it")
    print(f"{total} frames, {commits} commits, {total / max(commits, 1):.1f} frames per commit")
    for name, n in by_owner.most_common():
        print(f"{n:8d} {100 * n / total:5.1f} %  {name}")


if __name__ == "__main__":
    main()
