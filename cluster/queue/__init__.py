"""The replay queue as one unit: ``replay_queue`` (the bounded, staleness-checked, exactly-once
queue of group records), ``log`` (its durable Arrow IPC segments and commit file) and
``actor`` (the restartable Ray actor around it)."""
