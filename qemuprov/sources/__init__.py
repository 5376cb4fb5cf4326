"""Getting source trees: git mirrors and commits, tarballs, safe unpacking, and what is newest upstream."""
