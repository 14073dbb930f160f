"""MkDocs hook: adds the reference pages that :mod:`diffinv.docs_gen` writes from the registries.

Nothing is written into ``docs/``: the pages exist only in the built site, so they cannot go
stale and a new solver, operator, noise model, sub-command or job kind needs no docs edit.
"""

from __future__ import annotations

from mkdocs.structure.files import File, Files


def on_files(files: Files, config) -> Files:
    from diffinv.docs_gen import reference_pages

    for path, markdown in reference_pages().items():
        existing = files.get_file_from_path(path)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, path, content=markdown))
    return files
