"""Install tests: the built wheel, one extra, in a fresh virtualenv and a site from ``startproject``.

``conftest.py`` builds the sdist and the wheel once per test run;
``sites.py`` makes the virtualenv and the site and drives them through
``manage.py`` as a user would; each extra is its own test file, so the
processes of ``-n 2 --dist loadfile`` share the cases.
"""
