"""The command line: thin commands over profile, policy, backends and runtimes."""
