"""Fixed vocabularies of the ``habits`` scenario family: cities, devices, applications, reasons.

Deliberately not the vocabularies of :mod:`dfp_ray.tools.datagen`: other cities and time
zones, other applications, browsers whose versions roll forward during the data set, other
failure reasons. A detector tuned to one family's values meets new ones here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class City:
    city: str
    state: str
    country: str  # ISO code
    utc_offset: float  # hours, standard time (no DST in this family)


# Home cities, each paired with a nearby "second city" (commute, second office, carrier exit).
HOMES: tuple[tuple[City, City], ...] = (
    (City("Seattle", "Washington", "US", -8), City("Tacoma", "Washington", "US", -8)),
    (City("Denver", "Colorado", "US", -7), City("Boulder", "Colorado", "US", -7)),
    (City("Chicago", "Illinois", "US", -6), City("Evanston", "Illinois", "US", -6)),
    (City("Toronto", "Ontario", "CA", -5), City("Mississauga", "Ontario", "CA", -5)),
    (City("Sao Paulo", "Sao Paulo", "BR", -3), City("Campinas", "Sao Paulo", "BR", -3)),
    (City("Dublin", "Leinster", "IE", 0), City("Cork", "Munster", "IE", 0)),
    (City("Lisbon", "Lisboa", "PT", 0), City("Porto", "Porto", "PT", 0)),
    (City("Madrid", "Madrid", "ES", 1), City("Toledo", "Castilla-La Mancha", "ES", 1)),
    (City("Warsaw", "Mazowieckie", "PL", 1), City("Lodz", "Lodzkie", "PL", 1)),
    (City("Helsinki", "Uusimaa", "FI", 2), City("Espoo", "Uusimaa", "FI", 2)),
    (City("Nairobi", "Nairobi", "KE", 3), City("Thika", "Kiambu", "KE", 3)),
    (City("Dubai", "Dubai", "AE", 4), City("Sharjah", "Sharjah", "AE", 4)),
    (City("Bengaluru", "Karnataka", "IN", 5.5), City("Mysuru", "Karnataka", "IN", 5.5)),
    (City("Singapore", "Singapore", "SG", 8), City("Johor Bahru", "Johor", "MY", 8)),
    (City("Seoul", "Seoul", "KR", 9), City("Incheon", "Incheon", "KR", 9)),
    (City("Sydney", "New South Wales", "AU", 10), City("Newcastle", "New South Wales", "AU", 10)),
)
# Where accounts are used from when they are not their owner's: no home, second or trip city.
FOREIGN: tuple[City, ...] = (
    City("Lagos", "Lagos", "NG", 1),
    City("Bucharest", "Bucuresti", "RO", 2),
    City("Hanoi", "Hanoi", "VN", 7),
    City("Lima", "Lima", "PE", -5),
    City("Almaty", "Almaty", "KZ", 5),
    City("Manila", "Metro Manila", "PH", 8),
    City("Quito", "Pichincha", "EC", -5),
    City("Tbilisi", "Tbilisi", "GE", 4),
    City("Casablanca", "Casablanca-Settat", "MA", 0),
    City("Dhaka", "Dhaka", "BD", 6),
)


@dataclass(frozen=True)
class Device:
    browser: str  # family; Azure AD writes "<family> <version>" in deviceDetail.browser
    os: str
    os_version: str
    mobile: bool


DEVICES: tuple[tuple[float, Device], ...] = (
    (9, Device("Chrome", "Windows", "10", False)),
    (6, Device("Edge", "Windows", "11", False)),
    (3, Device("Firefox", "Windows", "10", False)),
    (5, Device("Safari", "Mac OS X", "14.1", False)),
    (3, Device("Chrome", "Mac OS X", "14.1", False)),
    (1, Device("Firefox", "Linux", "Ubuntu 22.04", False)),
    (4, Device("Chrome Mobile", "Android", "14", True)),
    (4, Device("Mobile Safari", "iOS", "17.1", True)),
    (1, Device("Samsung Internet", "Android", "13", True)),
)
# Browsers no user of this family ever uses: only attackers bring them.
ATTACKER_DEVICES: tuple[Device, ...] = (
    Device("Opera", "Windows", "10", False),
    Device("Yandex Browser", "Windows", "10", False),
    Device("Vivaldi", "Linux", "Debian 12", False),
    Device("Brave", "Windows", "11", False),
)
# Major version at the data set's start and days between releases; each user upgrades a few
# days after a release: a new browser version is ordinary, and happens during inference too.
BROWSER_RELEASES: dict[str, tuple[int, int]] = {
    "Chrome": (118, 28),
    "Chrome Mobile": (118, 28),
    "Edge": (118, 28),
    "Firefox": (119, 28),
    "Safari": (17, 60),
    "Mobile Safari": (17, 60),
    "Samsung Internet": (23, 45),
    "Opera": (104, 28),
    "Yandex Browser": (23, 30),
    "Vivaldi": (6, 40),
    "Brave": (120, 28),
}


@dataclass(frozen=True)
class App:
    name: str
    key: str  # Duo integration key / Azure AD appId stand-in
    client: str  # Azure AD clientAppUsed: "Browser" or "Mobile Apps and Desktop clients"
    weight: float  # how many users have it


APPS: tuple[App, ...] = (
    App("Okta Dashboard", "DI0KTA1", "Browser", 10),
    App("GlobalProtect VPN", "DIGPVPN", "Mobile Apps and Desktop clients", 8),
    App("Workday", "DIWRKDY", "Browser", 7),
    App("Microsoft Teams", "DITEAMS", "Mobile Apps and Desktop clients", 9),
    App("Outlook", "DIOUTLK", "Mobile Apps and Desktop clients", 9),
    App("SharePoint Online", "DISHRPT", "Browser", 6),
    App("Jira Cloud", "DIJIRA0", "Browser", 5),
    App("Confluence", "DICONFL", "Browser", 4),
    App("GitHub Enterprise", "DIGITHB", "Browser", 3),
    App("Salesforce", "DISLSFC", "Browser", 3),
    App("ServiceNow", "DISNOW0", "Browser", 3),
    App("Zoom", "DIZOOM0", "Mobile Apps and Desktop clients", 4),
    App("Tableau", "DITABLU", "Browser", 2),
    App("Concur Expenses", "DICONCR", "Browser", 2),
)
# Applications only a few administrators use; attackers reach for them.
SENSITIVE_APPS: tuple[App, ...] = (
    App("AWS Console", "DIAWSC0", "Browser", 0),
    App("Azure Portal", "DIAZPRT", "Browser", 0),
    App("HashiCorp Vault", "DIVAULT", "Browser", 0),
    App("Payroll Admin", "DIPAYRL", "Browser", 0),
    App("Snowflake", "DISNOWF", "Browser", 0),
    App("Okta Admin Console", "DIOKTAA", "Browser", 0),
)

FACTORS: tuple[tuple[str, str, float], ...] = (
    # (factor, reason on success, share of users with it as their primary factor)
    ("duo_push", "user_approved", 0.6),
    ("passcode", "valid_passcode", 0.15),
    ("webauthn", "user_approved", 0.15),
    ("phone_call", "user_approved", 0.1),
)
# Everyday failures; each user has one or two of their own.
FAIL_REASONS: tuple[str, ...] = ("user_cancelled", "no_response", "invalid_passcode", "user_mistake")
AZURE_OK = "Other."
AZURE_FAILURES: dict[str, str] = {
    "user_cancelled": "The user didn't complete the MFA prompt.",
    "no_response": "Authentication failed during strong authentication request.",
    "invalid_passcode": "Invalid verification code.",
    "user_mistake": "Error validating credentials due to invalid username or password.",
    "user_denied": "The user denied the MFA request.",
}
AZURE_ERROR_CODES: dict[str, int] = {
    "user_cancelled": 50074,
    "no_response": 500121,
    "invalid_passcode": 50076,
    "user_mistake": 50126,
    "user_denied": 500121,
}
PHONES: tuple[str, ...] = ("Pixel 8", "iPhone 15", "Galaxy S23", "iPhone 13", "Pixel 7a", "Moto G")
FIRST = (
    "ana", "bram", "chen", "dara", "emeka", "fatima", "goran", "hana", "ines", "jonas", "kofi", "lena",
    "mateo", "nadia", "oskar", "priya", "quinn", "rafael", "sana", "tomas", "uma", "viktor", "wen",
    "ximena", "yusuf", "zoe", "arjun", "bea", "cyrus", "dilan",
)  # fmt: skip
LAST = (
    "okafor", "lindqvist", "moreau", "tanaka", "nowak", "haddad", "silva", "kowalski", "murphy",
    "rossi", "nguyen", "schmidt", "kaur", "ito", "costa", "novak", "oliveira", "walsh", "becker",
    "park", "mensah", "duarte", "sato", "larsen", "ahmed", "volkov", "rivera", "klein", "ozturk",
    "fischer",
)  # fmt: skip
DOMAIN = "northwind.example"
