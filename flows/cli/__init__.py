"""synpref's command line (typer + rich). Each area registers its commands from its own module."""
