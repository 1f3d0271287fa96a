"""Fixed vocabularies of the ``roster`` family: offices, travel cities, devices, applications, outcomes.

Kept apart from the logic so the family's world can be read in one place, and deliberately
not the vocabularies of the other two families (other cities and zones, other integrations
and apps, other phone models): a detector tuned to their values meets new ones here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class City:
    city: str
    state: str
    country: str  # ISO 3166 alpha-2
    utc_offset: float  # hours, standard time
    dst: bool = False  # the region moves its clocks (used by the dst_shift rare-normal kind)


# Six offices, each with the two places its people live or commute from. One zone per office.
OFFICES: tuple[tuple[City, City, City], ...] = (
    (City("San Francisco", "California", "US", -8, True), City("Oakland", "California", "US", -8, True),
     City("San Jose", "California", "US", -8, True)),
    (City("New York", "New York", "US", -5, True), City("Newark", "New Jersey", "US", -5, True),
     City("Philadelphia", "Pennsylvania", "US", -5, True)),
    (City("London", "England", "GB", 0, True), City("Reading", "England", "GB", 0, True),
     City("Brighton", "England", "GB", 0, True)),
    (City("Berlin", "Berlin", "DE", 1, True), City("Potsdam", "Brandenburg", "DE", 1, True),
     City("Leipzig", "Saxony", "DE", 1, True)),
    (City("Pune", "Maharashtra", "IN", 5.5), City("Mumbai", "Maharashtra", "IN", 5.5),
     City("Hyderabad", "Telangana", "IN", 5.5)),
    (City("Tokyo", "Tokyo", "JP", 9), City("Yokohama", "Kanagawa", "JP", 9),
     City("Saitama", "Saitama", "JP", 9)),
)
OFFICE_WEIGHTS: tuple[float, ...] = (0.2, 0.25, 0.15, 0.15, 0.15, 0.1)
# Where people go on business: conferences, customers. Also where some trips of the training
# window go, so these cities are not new to the population as a whole.
TRAVEL: tuple[City, ...] = (
    City("Las Vegas", "Nevada", "US", -8),
    City("Barcelona", "Catalonia", "ES", 1),
    City("Singapore", "Singapore", "SG", 8),
    City("Amsterdam", "North Holland", "NL", 1),
    City("Austin", "Texas", "US", -6),
    City("Vienna", "Vienna", "AT", 1),
)
# Where accounts are used from when their owner is not there: residential proxies, VPS, hosting.
# Some of them are also customer sites a few people visit in training.
ELSEWHERE: tuple[City, ...] = (
    City("Sao Paulo", "Sao Paulo", "BR", -3),
    City("Johannesburg", "Gauteng", "ZA", 2),
    City("Jakarta", "Jakarta", "ID", 7),
    City("Istanbul", "Istanbul", "TR", 3),
    City("Bucharest", "Bucharest", "RO", 2),
    City("Mexico City", "Mexico City", "MX", -6),
    City("Kuala Lumpur", "Kuala Lumpur", "MY", 8),
    City("Riyadh", "Riyadh", "SA", 3),
    City("Bogota", "Bogota", "CO", -5),
    City("Frankfurt", "Hesse", "DE", 1),
    City("Ashburn", "Virginia", "US", -5),
    City("Sydney", "New South Wales", "AU", 10),
)
# Customer sites among ELSEWHERE that training trips may go to.
CUSTOMER_SITES: tuple[str, ...] = ("Sao Paulo", "Istanbul", "Mexico City", "Sydney", "Frankfurt")
# Hosting cities credential-stuffing tools run from.
HOSTING: tuple[str, ...] = ("Ashburn", "Frankfurt", "Amsterdam", "Singapore", "Bucharest", "Sao Paulo")


@dataclass(frozen=True)
class Device:
    kind: str  # laptop, phone, tablet
    browser: str  # Duo access_device.browser family; Azure writes "<browser> <version>"
    os: str  # Duo access_device.os
    os_version: str
    azure_os: str  # Azure deviceDetail.operatingSystem


LAPTOPS: tuple[tuple[float, Device], ...] = (
    (8, Device("laptop", "Chrome", "Windows", "10", "Windows 10")),
    (7, Device("laptop", "Edge Chromium", "Windows", "11", "Windows 11")),
    (5, Device("laptop", "Chrome", "Windows", "11", "Windows 11")),
    (2, Device("laptop", "Firefox", "Windows", "10", "Windows 10")),
    (4, Device("laptop", "Safari", "Mac OS X", "14.2", "MacOs")),
    (3, Device("laptop", "Chrome", "Mac OS X", "14.2", "MacOs")),
    (1, Device("laptop", "Firefox", "Linux", "", "Linux")),
    (1, Device("laptop", "Chrome", "Chrome OS", "120", "ChromeOS")),
)
PHONES: tuple[tuple[float, Device], ...] = (
    (5, Device("phone", "Mobile Safari", "iOS", "17.2", "Ios")),
    (4, Device("phone", "Chrome Mobile", "Android", "14", "Android")),
    (1, Device("phone", "Samsung Internet", "Android", "13", "Android")),
)
TABLETS: tuple[tuple[float, Device], ...] = (
    (3, Device("tablet", "Mobile Safari", "iOS", "17.2", "Ios")),
    (1, Device("tablet", "Chrome", "Android", "13", "Android")),
)
# Major version at the start of the data set, days between releases, version string pattern.
BROWSER_RELEASES: dict[str, tuple[int, int]] = {
    "Chrome": (120, 28), "Chrome Mobile": (120, 28), "Edge Chromium": (120, 28), "Firefox": (121, 28),
    "Safari": (17, 45), "Mobile Safari": (17, 45), "Samsung Internet": (23, 40), "Rich Client": (4, 35),
}
PHONE_MODELS: tuple[str, ...] = (
    "iPhone 12", "iPhone 13 mini", "iPhone 14", "iPhone 15 Pro", "Pixel 7", "Pixel 8", "Galaxy S22",
    "Galaxy A54", "OnePlus 11", "Xperia 10 V",
)
SECURITY_KEYS: tuple[str, ...] = ("YubiKey 5 NFC", "YubiKey 5C", "Feitian ePass", "Titan Security Key")
COUNTRY_CALLING: dict[str, str] = {"US": "+1", "GB": "+44", "DE": "+49", "IN": "+91", "JP": "+81"}


@dataclass(frozen=True)
class DuoApp:
    name: str
    key: str  # integration key
    browserless: bool  # VPN clients and Windows logon report no browser
    weight: float  # how many people have it


DUO_APPS: tuple[DuoApp, ...] = (
    DuoApp("Microsoft 365 SSO", "DIM365SS0QPL8W3RTY2A", False, 10),
    DuoApp("Palo Alto GlobalProtect", "DIPAGPVPN4K2J7H9XZ1B", True, 8),
    DuoApp("Windows Logon", "DIWINLGN6M3N8B2V5CXQ", True, 5),
    DuoApp("Atlassian Cloud", "DIATLSSN9D4F6G1H3JKW", False, 6),
    DuoApp("Salesforce", "DISLSFRC2P7O5I3U8YTE", False, 4),
    DuoApp("ServiceNow", "DISRVNOW5R1T9Y4U7IOP", False, 4),
    DuoApp("GitLab", "DIGITLAB8A2S6D3F1GHJ", False, 3),
    DuoApp("Zendesk", "DIZNDSK3L5K8J2H6G4FD", False, 3),
    DuoApp("BambooHR", "DIBMBOHR7Z9X3C5V1BNM", False, 2),
    DuoApp("Citrix Workspace", "DICTRXWS4Q6W8E2R5TYU", False, 3),
)


@dataclass(frozen=True)
class AzureApp:
    name: str
    app_id: str
    clients: tuple[str, ...]  # clientAppUsed values the app is reached with
    weight: float


AZURE_APPS: tuple[AzureApp, ...] = (
    AzureApp("Office 365 Exchange Online", "00000002-0000-0ff1-ce00-000000000000",
             ("Browser", "Mobile Apps and Desktop clients"), 9),
    AzureApp("Microsoft Teams", "1fec8e78-bce4-4aaf-ab1b-5451cc387264",
             ("Mobile Apps and Desktop clients", "Browser"), 9),
    AzureApp("Office 365 SharePoint Online", "00000003-0000-0ff1-ce00-000000000000", ("Browser",), 6),
    AzureApp("OfficeHome", "4765445b-32c6-49b0-83e6-1d93765276ca", ("Browser",), 8),
    AzureApp("Microsoft Azure Portal", "c44b4083-3bb0-49c1-b47d-974e53cbdf3c", ("Browser",), 2),
    AzureApp("Power BI Service", "871c010f-5e61-4fb1-83ac-98610a7e9110", ("Browser",), 3),
    AzureApp("Microsoft Intune Company Portal", "9ba1a5c7-f17a-4de9-a1f1-6178c8d51223",
             ("Mobile Apps and Desktop clients",), 2),
    AzureApp("Workday", "a8b3c3f1-3f0e-4c5e-9d5e-1c0d7f2b9e11", ("Browser",), 4),
    AzureApp("Dynamics 365", "00000007-0000-0000-c000-000000000000", ("Browser",), 2),
    AzureApp("OneDrive SyncEngine", "ab9b8c07-8f02-4f72-87fa-80105867a763",
             ("Mobile Apps and Desktop clients",), 4),
)
# The apps a credential-stuffing tool signs in to (the tenant's web sign-in pages).
STUFFING_APP = "OfficeHome"
DUO_STUFFING_APP = "Microsoft 365 SSO"

# Duo: factor -> reason on success.
DUO_FACTORS: dict[str, str] = {
    "duo_push": "user_approved",
    "phone_call": "user_approved",
    "duo_mobile_passcode": "valid_passcode",
    "webauthn_security_key": "user_approved",
    "remembered_device": "remembered_device",
}
# Duo: a person's everyday mistakes, per factor.
DUO_MISTAKES: dict[str, tuple[str, ...]] = {
    "duo_push": ("user_cancelled", "no_response"),
    "phone_call": ("no_keys_pressed", "user_cancelled"),
    "duo_mobile_passcode": ("invalid_passcode",),
    "webauthn_security_key": ("user_cancelled",),
    "remembered_device": ("user_cancelled",),
}
AZURE_OK_REASON = "Other."
AZURE_FAILURES: dict[int, str] = {
    50126: "Error validating credentials due to invalid username or password.",
    50074: "Strong Authentication is required.",
    50140: "This error occurred due to 'Keep me signed in' interrupt when the user was signing in.",
    50089: "Flow token expired - Authentication Failed.",
    500121: "Authentication failed during strong authentication request.",
    50053: "Account is locked because user tried to sign in too many times with an incorrect user ID or password.",
}
# Everyday Azure failures and how often people have each as a habit.
AZURE_NORMAL_FAILS: dict[int, float] = {50140: 4.0, 50074: 3.0, 50126: 1.5, 50089: 0.5, 500121: 1.0}

FIRST = (
    "aiko", "bilal", "carmen", "deepa", "elias", "farah", "gunnar", "hiro", "isabel", "jamal", "keiko",
    "lars", "maya", "nikhil", "olga", "pedro", "rhea", "sven", "tara", "umar", "vera", "wes", "yara",
    "zainab", "anton", "beatriz", "colm", "daisuke", "esther", "felix", "greta", "haruto", "ishaan", "jun",
)  # fmt: skip
LAST = (
    "abe", "brennan", "castillo", "deshpande", "eriksen", "fujita", "gallagher", "hoffmann", "iyer",
    "jablonski", "kapoor", "lehmann", "mori", "nakamura", "obrien", "patel", "quist", "reyes", "suzuki",
    "thornton", "ueda", "vogel", "whitaker", "yamada", "zimmer", "bauer", "chowdhury", "dunne",
)  # fmt: skip
DOMAIN = "fabrikam-roster.example"
