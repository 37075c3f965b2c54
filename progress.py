"""Progress bars that read in a log file. On a terminal, tqdm's bar updates in place. When stderr is not one
(`make ensemble > log 2>&1`, a notebook's saved log), a plain line every `every_seconds` and one at the end of
each loop (a training epoch's last line has its loss): no carriage returns, no redrawn bars.

    from progress import progress
    for batch in progress(batches, total=n, desc="model 1 epoch 3/50", unit="batch"):
        ...
"""
import sys

from tqdm import tqdm

every_seconds = 30        # between two lines of a log file
line_width = 100          # a log line's bar and counts


class LogLines:
    """A stream that turns tqdm's redraws ("\\r" + bar) into whole lines, dropping repeats and blank ones."""

    def __init__(self, stream):
        self.stream, self.last = stream, None

    def write(self, text):
        for part in text.replace("\r", "\n").split("\n"):
            part = part.rstrip()
            if part and part != self.last:
                self.stream.write(part + "\n")
                self.last = part

    def flush(self):
        self.stream.flush()


def progress(iterable=None, **kwargs):
    """tqdm(iterable, **kwargs) on a terminal; in a log file, a line every `every_seconds` and at the end."""
    stream = kwargs.pop("file", sys.stderr)
    if stream.isatty():
        return tqdm(iterable, file=stream, **kwargs)
    return tqdm(iterable, file=LogLines(stream), mininterval=every_seconds, maxinterval=every_seconds, ascii=True,
                ncols=line_width, **kwargs)
