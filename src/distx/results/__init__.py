"""The results file: its layout, its writer, its readers, and the commands that show,
export and administer it."""
