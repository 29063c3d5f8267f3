"""What people read: tables, progress lines, the HTML run report, plots, the accuracy matrix."""
