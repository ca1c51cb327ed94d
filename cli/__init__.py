"""The `livemig` command line: services, the migration client, demo and benchmark."""
