"""A blog app whose comments are checked for spam in the background."""
