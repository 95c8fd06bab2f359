"""Map the design card's top-level folders onto subpackages of one import package, `tether`.

pyproject.toml cannot enumerate nested packages under a remapped directory, so the mapping is
computed here: `robot/` installs as `tether.robot`, `robot/twin/` as `tether.robot.twin`, etc.
Users never get top-level modules called `data` or `robot`.
"""

from setuptools import find_packages, setup

PARTS = ["robot", "teleop", "policies", "data", "calibration"]

packages = ["tether"] + [f"tether.{sub}" for sub in find_packages("tether")]
package_dir = {"tether": "tether"}
for part in PARTS:
    package_dir[f"tether.{part}"] = part
    packages.append(f"tether.{part}")
    packages += [f"tether.{part}.{sub}" for sub in find_packages(part)]

DATA_PATTERNS = ["*.xml", "*.json", "*.yaml", "*.yml", "*.toml", "*.html", "*.css", "*.png"]

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={name: DATA_PATTERNS + ["assets/*", "assets/**/*"] for name in packages},
    include_package_data=True,
)
