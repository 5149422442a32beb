"""Starting policies: ``embedded`` (the tiny model and tokenizer duet builds itself),
``warmstart`` (its cached supervised warm start on the embedded task) and ``models``
(resolving ``model.path`` to a checked local folder)."""
