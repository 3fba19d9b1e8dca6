from django.contrib.auth.hashers import Argon2PasswordHasher as DjangoArgon2PasswordHasher


class Argon2PasswordHasher(DjangoArgon2PasswordHasher):
    """Argon2id with OWASP's recommended cost (19 MiB, 2 passes, 1 lane).

    Django's default (100 MiB, 8 lanes) costs several times more CPU and memory per hash
    (README, "Accounts and authentication"), which turns login into a denial-of-service
    lever. Same algorithm name, so existing hashes
    verify and are upgraded on the next login.
    """

    time_cost = 2
    memory_cost = 19456
    parallelism = 1
