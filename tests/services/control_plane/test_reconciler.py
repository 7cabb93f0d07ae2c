from services.control_plane.reconciler import failure_summary


def test_the_summary_is_the_exception_line_that_matters():
    tail = "\n".join(
        [
            "Traceback (most recent call last):",
            '  File "x.py", line 1, in <module>',
            "re.error: missing ), unterminated subpattern at position 14",
            "error: re.error: missing ), unterminated subpattern at position 14",
            "[spin] final error: retrying cannot help",
        ]
    )
    assert failure_summary("exit 3", tail) == "re.error: missing ), unterminated subpattern at position 14"
    assert failure_summary("Job failed: exit 1", "no traceback here") == "Job failed: exit 1"
    chained = "KeyError: 'x'\nDuring handling...\njobs.sft_rows.BadRowsError: 2 SFT row(s) cannot be used"
    assert failure_summary(None, chained) == "jobs.sft_rows.BadRowsError: 2 SFT row(s) cannot be used"
