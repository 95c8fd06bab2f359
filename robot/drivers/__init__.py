"""Hardware drivers. Each imports its vendor SDK lazily and names the pip extra when it is missing."""
