from setuptools import setup

setup(
    name="chunkd",
    version="0.1.0",
    description="A resumable-upload daemon on Twisted: tus 1.0.0, Resumable.js, flow.js",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=["chunkd", "chunkd.protocols", "twisted.plugins"],
    # The upload page (chunkd/page.py) and the operator's view
    # (chunkd/admin.py): plain files, no build step.
    package_data={"twisted": ["plugins/chunkd_plugin.py"],
                  "chunkd": ["ui/*.html", "ui/*.js", "ui/*.css", "admin_static/*"]},
    python_requires=">=3.9",
    install_requires=[
        "twisted[tls]>=25.5",
        "klein>=24.8",
        "treq>=24.9",
        "service-identity>=24.1",
        "pyyaml>=6.0",
        "multipart>=1.2",
        "prometheus-client>=0.20",
        # JWT verification for auth.jwt (never hand-written): the reference
        # implementation, maintained, with RSA/EC/EdDSA through cryptography.
        "PyJWT[crypto]>=2.10",
        # RFC 8941 structured fields (the IETF draft's Upload-Complete,
        # Upload-Limit, digests): mnot's parser and serializer, maintained.
        "http-sf>=1.5",
        # chunkctl's progress bar on a terminal while it walks many
        # uploads: small, pure Python, no dependencies, well kept.
        "tqdm>=4.66",
    ],
    entry_points={
        "console_scripts": ["chunkctl = chunkd.chunkctl:run"],
    },
    extras_require={
        # mypy-zope types the zope.interface seams (IService, IPushProducer);
        # hypothesis, a well-kept property-testing library, generates the
        # hostile requests of tests/test_properties.py.
        "test": ["tuspy>=1.0", "mypy>=1.10", "mypy-zope>=1.0", "types-PyYAML", "hypothesis>=6.100"],
    },
)
