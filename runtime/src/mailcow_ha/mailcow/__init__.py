"""mailcow-dockerized on Galera and the shared volume: init, database fixes, bootstrap, backups."""
