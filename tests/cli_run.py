"""The one helper the CLI tests share: run ``polylens ARGV...`` in-process."""

from cli.main import main


def run(capsys, *argv):
    """``(exit code, stdout, stderr)`` of ``polylens *argv`` (arguments str()-ed, so paths may be Paths)."""
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err
