"""hsb: hot standby with high-speed switching (JP H06-342382 as asyncio daemons)."""

__version__ = "0.1.0"
