"""Static facts the generator draws from: cities, names, devices, applications, reason codes.

Kept apart from the sampling code so a reader can check the vocabulary against real Duo and
Azure AD sign-in logs at a glance, and so the anomaly code can ask "which values could this
user's normal behaviour ever produce?" by looking at plain tables.

Why over ~400 lines: it is data (vocabularies of devices, browsers, places, applications per
archetype), not logic.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class City:
    city: str
    state: str
    country: str  # full name, as Duo writes it
    code: str  # ISO 3166 alpha-2, as Azure AD writes countryOrRegion
    lat: float
    lon: float
    utc_offset: float  # hours, August (summer time where it applies)


# Where employees live and work (office cities first: users cluster there).
HOME_CITIES: tuple[City, ...] = (
    City("San Jose", "California", "United States", "US", 37.3382, -121.8863, -7),
    City("New York", "New York", "United States", "US", 40.7128, -74.0060, -4),
    City("Austin", "Texas", "United States", "US", 30.2672, -97.7431, -5),
    City("London", "England", "United Kingdom", "GB", 51.5074, -0.1278, 1),
    City("Berlin", "Berlin", "Germany", "DE", 52.5200, 13.4050, 2),
    City("Bengaluru", "Karnataka", "India", "IN", 12.9716, 77.5946, 5.5),
    City("Seattle", "Washington", "United States", "US", 47.6062, -122.3321, -7),
    City("Chicago", "Illinois", "United States", "US", 41.8781, -87.6298, -5),
    City("Boston", "Massachusetts", "United States", "US", 42.3601, -71.0589, -4),
    City("Denver", "Colorado", "United States", "US", 39.7392, -104.9903, -6),
    City("Atlanta", "Georgia", "United States", "US", 33.7490, -84.3880, -4),
    City("Ann Arbor", "Michigan", "United States", "US", 42.2808, -83.7430, -4),
    City("Toronto", "Ontario", "Canada", "CA", 43.6532, -79.3832, -4),
    City("Vancouver", "British Columbia", "Canada", "CA", 49.2827, -123.1207, -7),
    City("Manchester", "England", "United Kingdom", "GB", 53.4808, -2.2426, 1),
    City("Munich", "Bavaria", "Germany", "DE", 48.1351, 11.5820, 2),
    City("Paris", "Ile-de-France", "France", "FR", 48.8566, 2.3522, 2),
    City("Amsterdam", "North Holland", "Netherlands", "NL", 52.3676, 4.9041, 2),
    City("Dublin", "Leinster", "Ireland", "IE", 53.3498, -6.2603, 1),
    City("Madrid", "Madrid", "Spain", "ES", 40.4168, -3.7038, 2),
    City("Stockholm", "Stockholm", "Sweden", "SE", 59.3293, 18.0686, 2),
    City("Warsaw", "Mazovia", "Poland", "PL", 52.2297, 21.0122, 2),
    City("Tel Aviv", "Tel Aviv", "Israel", "IL", 32.0853, 34.7818, 3),
    City("Pune", "Maharashtra", "India", "IN", 18.5204, 73.8567, 5.5),
    City("Hyderabad", "Telangana", "India", "IN", 17.3850, 78.4867, 5.5),
    City("Singapore", "Singapore", "Singapore", "SG", 1.3521, 103.8198, 8),
    City("Tokyo", "Tokyo", "Japan", "JP", 35.6762, 139.6503, 9),
    City("Seoul", "Seoul", "South Korea", "KR", 37.5665, 126.9780, 9),
    City("Sydney", "New South Wales", "Australia", "AU", -33.8688, 151.2093, 10),
    City("Sao Paulo", "Sao Paulo", "Brazil", "BR", -23.5505, -46.6333, -3),
    City("Mexico City", "Mexico City", "Mexico", "MX", 19.4326, -99.1332, -5),
)

# Where a user's other usual connection geolocates (the office network, the mobile carrier's
# gateway, the ISP's registered city): one per home city, in HOME_CITIES order.
NEARBY_CITIES: tuple[City, ...] = (
    City("Santa Clara", "California", "United States", "US", 37.3541, -121.9552, -7),
    City("Jersey City", "New Jersey", "United States", "US", 40.7178, -74.0431, -4),
    City("Round Rock", "Texas", "United States", "US", 30.5083, -97.6789, -5),
    City("Croydon", "England", "United Kingdom", "GB", 51.3762, -0.0982, 1),
    City("Potsdam", "Brandenburg", "Germany", "DE", 52.3906, 13.0645, 2),
    City("Mysuru", "Karnataka", "India", "IN", 12.2958, 76.6394, 5.5),
    City("Bellevue", "Washington", "United States", "US", 47.6101, -122.2015, -7),
    City("Evanston", "Illinois", "United States", "US", 42.0451, -87.6877, -5),
    City("Cambridge", "Massachusetts", "United States", "US", 42.3736, -71.1097, -4),
    City("Aurora", "Colorado", "United States", "US", 39.7294, -104.8319, -6),
    City("Marietta", "Georgia", "United States", "US", 33.9526, -84.5499, -4),
    City("Ypsilanti", "Michigan", "United States", "US", 42.2411, -83.6130, -4),
    City("Mississauga", "Ontario", "Canada", "CA", 43.5890, -79.6441, -4),
    City("Burnaby", "British Columbia", "Canada", "CA", 49.2488, -122.9805, -7),
    City("Salford", "England", "United Kingdom", "GB", 53.4875, -2.2901, 1),
    City("Garching", "Bavaria", "Germany", "DE", 48.2490, 11.6510, 2),
    City("Boulogne-Billancourt", "Ile-de-France", "France", "FR", 48.8397, 2.2399, 2),
    City("Amstelveen", "North Holland", "Netherlands", "NL", 52.3114, 4.8701, 2),
    City("Dun Laoghaire", "Leinster", "Ireland", "IE", 53.2940, -6.1339, 1),
    City("Alcobendas", "Madrid", "Spain", "ES", 40.5475, -3.6420, 2),
    City("Solna", "Stockholm", "Sweden", "SE", 59.3600, 18.0009, 2),
    City("Piaseczno", "Mazovia", "Poland", "PL", 52.0812, 21.0239, 2),
    City("Ramat Gan", "Tel Aviv", "Israel", "IL", 32.0684, 34.8248, 3),
    City("Pimpri-Chinchwad", "Maharashtra", "India", "IN", 18.6298, 73.7997, 5.5),
    City("Secunderabad", "Telangana", "India", "IN", 17.4399, 78.4983, 5.5),
    City("Woodlands", "Singapore", "Singapore", "SG", 1.4382, 103.7890, 8),
    City("Kawasaki", "Kanagawa", "Japan", "JP", 35.5308, 139.7029, 9),
    City("Seongnam", "Gyeonggi-do", "South Korea", "KR", 37.4200, 127.1267, 9),
    City("Parramatta", "New South Wales", "Australia", "AU", -33.8150, 151.0011, 10),
    City("Guarulhos", "Sao Paulo", "Brazil", "BR", -23.4538, -46.5333, -3),
    City("Naucalpan", "State of Mexico", "Mexico", "MX", 19.4785, -99.2396, -5),
)

# How many of the home cities are company offices (users cluster there, travel goes there).
N_OFFICES = 6

# Exit points attackers use (bullet-proof hosting, residential proxies abroad). Never a home
# or a travel destination of a normal user, so any of them is a new country AND city.
ATTACKER_CITIES: tuple[City, ...] = (
    City("Lagos", "Lagos", "Nigeria", "NG", 6.5244, 3.3792, 1),
    City("Bucharest", "Bucharest", "Romania", "RO", 44.4268, 26.1025, 3),
    City("Chisinau", "Chisinau", "Moldova", "MD", 47.0105, 28.8638, 3),
    City("Ho Chi Minh City", "Ho Chi Minh", "Vietnam", "VN", 10.8231, 106.6297, 7),
    City("Jakarta", "Jakarta", "Indonesia", "ID", -6.2088, 106.8456, 7),
    City("Caracas", "Capital District", "Venezuela", "VE", 10.4806, -66.9036, -4),
    City("Almaty", "Almaty", "Kazakhstan", "KZ", 43.2220, 76.8512, 6),
    City("Tashkent", "Tashkent", "Uzbekistan", "UZ", 41.2995, 69.2401, 5),
    City("Dhaka", "Dhaka", "Bangladesh", "BD", 23.8103, 90.4125, 6),
    City("Accra", "Greater Accra", "Ghana", "GH", 5.6037, -0.1870, 0),
    City("Nairobi", "Nairobi", "Kenya", "KE", -1.2921, 36.8219, 3),
    City("Lima", "Lima", "Peru", "PE", -12.0464, -77.0428, -5),
    City("Tbilisi", "Tbilisi", "Georgia", "GE", 41.7151, 44.8271, 4),
    City("Sofia", "Sofia City", "Bulgaria", "BG", 42.6977, 23.3219, 3),
    City("Belgrade", "Central Serbia", "Serbia", "RS", 44.7866, 20.4489, 2),
    City("Manila", "Metro Manila", "Philippines", "PH", 14.5995, 120.9842, 8),
)

# Cloud regions: where a jump host or cloud shell egresses from (new city, usually same country).
DATACENTER_CITIES: tuple[City, ...] = (
    City("Boydton", "Virginia", "United States", "US", 36.6676, -78.3875, -4),
    City("Des Moines", "Iowa", "United States", "US", 41.5868, -93.6250, -5),
    City("Quincy", "Washington", "United States", "US", 47.2343, -119.8525, -7),
    City("Middenmeer", "North Holland", "Netherlands", "NL", 52.8069, 4.9964, 2),
)

FIRST_NAMES: tuple[str, ...] = (
    "james",
    "mary",
    "robert",
    "patricia",
    "john",
    "jennifer",
    "michael",
    "linda",
    "david",
    "elizabeth",
    "william",
    "barbara",
    "richard",
    "susan",
    "joseph",
    "jessica",
    "thomas",
    "sarah",
    "charles",
    "karen",
    "daniel",
    "nancy",
    "matthew",
    "lisa",
    "anthony",
    "betty",
    "mark",
    "margaret",
    "donald",
    "sandra",
    "steven",
    "ashley",
    "paul",
    "kimberly",
    "andrew",
    "emily",
    "joshua",
    "donna",
    "kenneth",
    "michelle",
    "priya",
    "arjun",
    "wei",
    "mei",
    "hiroshi",
    "yuki",
    "olga",
    "ivan",
    "fatima",
    "omar",
    "sofia",
    "lucas",
    "emma",
    "noah",
    "lena",
    "jonas",
    "chloe",
    "hugo",
    "ana",
    "mateo",
    "aisha",
    "kwame",
    "ingrid",
    "lars",
    "zofia",
    "piotr",
    "noa",
    "eitan",
    "min-jun",
    "seo-yeon",
)
LAST_NAMES: tuple[str, ...] = (
    "smith",
    "johnson",
    "williams",
    "brown",
    "jones",
    "garcia",
    "miller",
    "davis",
    "rodriguez",
    "martinez",
    "hernandez",
    "lopez",
    "gonzalez",
    "wilson",
    "anderson",
    "thomas",
    "taylor",
    "moore",
    "jackson",
    "martin",
    "lee",
    "perez",
    "thompson",
    "white",
    "harris",
    "sanchez",
    "clark",
    "ramirez",
    "lewis",
    "robinson",
    "walker",
    "young",
    "allen",
    "king",
    "wright",
    "scott",
    "torres",
    "nguyen",
    "hill",
    "flores",
    "patel",
    "sharma",
    "chen",
    "wang",
    "tanaka",
    "sato",
    "ivanova",
    "petrov",
    "khan",
    "haddad",
    "muller",
    "schmidt",
    "dubois",
    "moreau",
    "rossi",
    "silva",
    "kowalski",
    "nowak",
    "cohen",
    "levi",
    "kim",
    "park",
    "okafor",
    "mensah",
    "lindqvist",
    "berg",
    "oconnor",
    "murphy",
    "fernandes",
    "costa",
)

COMPANY_DOMAIN = "corp.example"

# ---------------------------------------------------------------------------------------------
# Duo
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DuoDevice:
    """An access device as Duo describes it (the browser and OS are model features)."""

    os: str
    os_version: str
    browser: str
    browser_version: str


# (weight, device). Versions are fixed for the whole data set: the model sees the browser and
# OS names only, but keeping versions stable is what a one-month window looks like anyway.
DUO_USER_DEVICES: tuple[tuple[float, DuoDevice], ...] = (
    (8, DuoDevice("Windows", "10", "Chrome", "104.0.5112.81")),
    (6, DuoDevice("Windows", "10", "Edge", "104.0.1293.47")),
    (3, DuoDevice("Windows", "11", "Chrome", "104.0.5112.81")),
    (2, DuoDevice("Windows", "10", "Firefox", "103.0.2")),
    (6, DuoDevice("Mac OS X", "12.5", "Chrome", "104.0.5112.79")),
    (5, DuoDevice("Mac OS X", "12.5", "Safari", "15.6")),
    (1, DuoDevice("Mac OS X", "11.6.8", "Firefox", "103.0.2")),
    (4, DuoDevice("iOS", "15.6", "Mobile Safari", "15.6")),
    (3, DuoDevice("Android", "12", "Chrome Mobile", "104.0.5112.69")),
    (1, DuoDevice("Chrome OS", "14909.132.0", "Chrome", "103.0.5060.132")),
)

# Devices attackers bring (and servers an insider hops to). Several are never a normal user's
# device at all; the anomaly code still checks each choice against the victim's own set.
DUO_ATTACKER_DEVICES: tuple[DuoDevice, ...] = (
    DuoDevice("Linux", "", "Firefox", "91.0"),
    DuoDevice("Linux", "", "Chromium", "102.0.5005.61"),
    DuoDevice("Windows", "7", "Internet Explorer", "11.0"),
    DuoDevice("Windows", "8.1", "Opera", "89.0.4447.83"),
    DuoDevice("Android", "9", "Samsung Internet", "17.0"),
    DuoDevice("Mac OS X", "10.13.6", "Brave", "1.41.100"),
)


@dataclass(frozen=True)
class DuoApp:
    name: str
    key: str
    browser_based: bool  # False: RADIUS/VPN/SSH integrations report no browser or OS


DUO_APPS: tuple[DuoApp, ...] = (
    DuoApp("Microsoft Azure Active Directory", "DIY231J8BR23QK4UKBY8", True),
    DuoApp("Okta", "DIQ9A4L0MZ2SPOX3W1EQ", True),
    DuoApp("Salesforce", "DI5RSPB2W8YQK3ZE6TNA", True),
    DuoApp("Workday", "DIT1NQ7ZXWDF9GH2K5LB", True),
    DuoApp("GitHub Enterprise", "DIG7HBE3RA9C2LWQ8XNU", True),
    DuoApp("Atlassian Cloud", "DIAC5V8PM2T4J1ZRQ7YD", True),
    DuoApp("Cisco AnyConnect VPN", "DIVP2N9RAD1US8C4XQ0E", False),
)
# Integrations only administrators and attackers touch.
DUO_PRIVILEGED_APPS: tuple[DuoApp, ...] = (
    DuoApp("Unix SSH - prod bastion", "DIUX0SSH7PB3K9ROD2AQ", False),
    DuoApp("Windows Logon - Domain Controllers", "DIWL4DC8RDP2N6X1ZQTE", False),
    DuoApp("Duo Admin Panel", "DIAD1MN5PAN3L7QW9ERT", True),
    DuoApp("AWS Console (production)", "DIAW5PRD2C9N4S7L0KXQ", True),
)
# OS a server reports through Duo Unix / Duo for Windows Logon.
DUO_SERVER_OSES: tuple[str, ...] = ("Linux", "Windows Server")

# Normal outcomes per factor: factor -> success reason.
DUO_FACTOR_SUCCESS_REASON: dict[str, str] = {
    "duo_push": "user_approved",
    "phone_call": "user_approved",
    "duo_mobile_passcode": "valid_passcode",
    "webauthn_security_key": "user_approved",
    "remembered_device": "remembered_device",
}
# Normal failures a legitimate user produces now and then (result "denied").
DUO_NORMAL_FAIL_REASONS: tuple[str, ...] = ("no_response", "user_cancelled", "user_mistake")
DUO_PASSCODE_FAIL_REASON = "invalid_passcode"
# Outcomes only attacks produce (result, reason).
DUO_ATTACK_OUTCOMES: dict[str, str] = {
    "user_marked_fraud": "fraud",
    "invalid_passcode": "denied",
    "locked_out": "denied",
    "deny_unenrolled_user": "denied",
    "anonymous_ip": "denied",
    "location_restricted": "denied",
    "no_response": "denied",
    "frequent_attempts": "denied",
    "user_not_in_permitted_group": "denied",
}

PHONE_MODELS: tuple[str, ...] = (
    "iPhone 13",
    "iPhone 12",
    "iPhone 11",
    "iPhone SE",
    "Pixel 6",
    "Pixel 5",
    "Galaxy S22",
    "Galaxy S21",
    "Galaxy A52",
    "OnePlus 9",
)
# Phones an attacker enrolls after a SIM swap / enrollment-link theft.
ATTACKER_PHONE_MODELS: tuple[str, ...] = ("Galaxy A12", "Redmi Note 10", "Moto G Power", "Nokia G20")

# ---------------------------------------------------------------------------------------------
# Azure AD
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AzureDevice:
    """deviceDetail of a sign-in. browser is what Azure parses from the user agent."""

    operating_system: str
    browser: str  # for "Browser" sign-ins
    rich_client: str  # browser field for "Mobile Apps and Desktop clients" sign-ins
    user_agent: str
    kind: str  # laptop | desktop | phone


AZURE_USER_DEVICES: tuple[tuple[float, AzureDevice], ...] = (
    (
        8,
        AzureDevice(
            "Windows10",
            "Edge 104.0.1293",
            "Rich Client 4.45.0.0",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/104.0.5112.81 Safari/537.36 Edg/104.0.1293.47",
            "laptop",
        ),
    ),
    (
        6,
        AzureDevice(
            "Windows10",
            "Chrome 104.0.5112",
            "Rich Client 4.45.0.0",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/104.0.5112.81 Safari/537.36",
            "desktop",
        ),
    ),
    (
        5,
        AzureDevice(
            "MacOs",
            "Chrome 104.0.5112",
            "Rich Client 4.44.1.0",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/104.0.5112.79 Safari/537.36",
            "laptop",
        ),
    ),
    (
        4,
        AzureDevice(
            "MacOs",
            "Safari 15.6",
            "Rich Client 4.44.1.0",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            "Version/15.6 Safari/605.1.15",
            "laptop",
        ),
    ),
    (
        2,
        AzureDevice(
            "Windows10",
            "Firefox 103.0",
            "Rich Client 4.45.0.0",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:103.0) Gecko/20100101 Firefox/103.0",
            "laptop",
        ),
    ),
    (
        4,
        AzureDevice(
            "Ios",
            "Mobile Safari 15.6",
            "MSAL 1.2.1",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 15_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
            "Gecko) Version/15.6 Mobile/15E148 Safari/604.1",
            "phone",
        ),
    ),
    (
        3,
        AzureDevice(
            "Android",
            "Chrome Mobile 104.0.5112",
            "MSAL 3.0.4",
            "Mozilla/5.0 (Linux; Android 12; SM-G991B) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/104.0.5112.69 Mobile Safari/537.36",
            "phone",
        ),
    ),
)

AZURE_ATTACKER_DEVICES: tuple[AzureDevice, ...] = (
    AzureDevice(
        "Linux",
        "Firefox 91.0",
        "",
        "Mozilla/5.0 (X11; Linux x86_64; rv:91.0) Gecko/20100101 Firefox/91.0",
        "laptop",
    ),
    AzureDevice(
        "Windows7",
        "IE 11.0",
        "",
        "Mozilla/5.0 (Windows NT 6.1; WOW64; Trident/7.0; rv:11.0) like Gecko",
        "desktop",
    ),
    AzureDevice(
        "Windows81",
        "Opera 89.0.4447",
        "",
        "Mozilla/5.0 (Windows NT 6.3; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/103.0.5060.134 Safari/537.36 OPR/89.0.4447.83",
        "desktop",
    ),
    AzureDevice(
        "Android",
        "Samsung Internet 17.0",
        "",
        "Mozilla/5.0 (Linux; Android 9; SM-J730F) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/17.0 Chrome/96.0.4664.104 Mobile Safari/537.36",
        "phone",
    ),
)
# What a script replaying a stolen token looks like (no OS parsed from its user agent).
AZURE_SCRIPT_DEVICE = AzureDevice(
    "", "Python Requests 2.28", "Python Requests 2.28", "python-requests/2.28.1", "script"
)


@dataclass(frozen=True)
class AzureApp:
    name: str
    app_id: str
    client: str  # clientAppUsed: "Browser" | "Mobile Apps and Desktop clients"
    resource: str  # resourceDisplayName
    resource_id: str
    interactive: float  # share of sign-ins that are interactive (rest: token refresh, non-interactive)


def _saas_id(name: str) -> str:
    """A stable made-up application id for a third-party SaaS app registered in the tenant."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://{COMPANY_DOMAIN}/enterprise-apps/{name}"))


_EXO = ("Office 365 Exchange Online", "00000002-0000-0ff1-ce00-000000000000")
_SPO = ("Office 365 SharePoint Online", "00000003-0000-0ff1-ce00-000000000000")
_GRAPH = ("Microsoft Graph", "00000003-0000-0000-c000-000000000000")
_ARM = ("Windows Azure Service Management API", "797f4846-ba00-4fd7-ba43-dac1f8f63013")

AZURE_APPS: tuple[tuple[float, AzureApp], ...] = (
    (
        9,
        AzureApp(
            "Microsoft Teams",
            "1fec8e78-bce4-4aaf-ab1b-5451cc387264",
            "Mobile Apps and Desktop clients",
            "Microsoft Teams Services",
            "cc15fd57-2c6c-4117-a88c-83b1d56b4bbe",
            0.3,
        ),
    ),
    (8, AzureApp("Office 365 Exchange Online", _EXO[1], "Mobile Apps and Desktop clients", *_EXO, 0.2)),
    (7, AzureApp("OfficeHome", "4765445b-32c6-49b0-83e6-1d93765276ca", "Browser", *_GRAPH, 0.9)),
    (6, AzureApp("Office 365 SharePoint Online", _SPO[1], "Browser", *_SPO, 0.7)),
    (5, AzureApp("One Outlook Web", "9199bf20-a13f-4107-85dc-02114787ef48", "Browser", *_EXO, 0.8)),
    (
        4,
        AzureApp(
            "Microsoft Office",
            "d3590ed6-52b3-4102-aeff-aad2292ab01c",
            "Mobile Apps and Desktop clients",
            *_SPO,
            0.3,
        ),
    ),
    (
        3,
        AzureApp(
            "OneDrive SyncEngine",
            "ab9b8c07-8f02-4f72-87fa-80105867a763",
            "Mobile Apps and Desktop clients",
            *_SPO,
            0.1,
        ),
    ),
    (3, AzureApp("Salesforce", _saas_id("Salesforce"), "Browser", "Salesforce", _saas_id("Salesforce"), 1.0)),
    (2, AzureApp("Workday", _saas_id("Workday"), "Browser", "Workday", _saas_id("Workday"), 1.0)),
    (2, AzureApp("ServiceNow", _saas_id("ServiceNow"), "Browser", "ServiceNow", _saas_id("ServiceNow"), 1.0)),
    (
        2,
        AzureApp(
            "Power BI",
            "871c010f-5e61-4fb1-83ac-98610a7e9110",
            "Browser",
            "Power BI Service",
            "00000009-0000-0000-c000-000000000000",
            0.8,
        ),
    ),
    (2, AzureApp("Zoom", _saas_id("Zoom"), "Browser", "Zoom", _saas_id("Zoom"), 1.0)),
)
# Administrative / developer apps a normal user of this company never signs in to.
AZURE_PRIVILEGED_APPS: tuple[AzureApp, ...] = (
    AzureApp("Azure Portal", "c44b4083-3bb0-49c1-b47d-974e53cbdf3c", "Browser", *_ARM, 1.0),
    AzureApp(
        "Microsoft Azure PowerShell",
        "1950a258-227b-4e31-a9cf-717495945fc2",
        "Mobile Apps and Desktop clients",
        *_ARM,
        1.0,
    ),
    AzureApp(
        "Microsoft Azure CLI",
        "04b07795-8ddb-461a-bbee-02f9e1bf7b46",
        "Mobile Apps and Desktop clients",
        *_ARM,
        1.0,
    ),
    AzureApp("Graph Explorer", "de8bc8b5-d9f9-48b1-a8ad-b748da725064", "Browser", *_GRAPH, 1.0),
    AzureApp(
        "Azure Key Vault",
        "cfa8b339-82a2-471a-a3c9-0fc0be7a4093",
        "Browser",
        "Azure Key Vault",
        "cfa8b339-82a2-471a-a3c9-0fc0be7a4093",
        1.0,
    ),
    AzureApp(
        "Microsoft Exchange Online Protection",
        "00000007-0000-0ff1-ce00-000000000000",
        "Browser",
        "Microsoft Exchange Online Protection",
        "00000007-0000-0ff1-ce00-000000000000",
        1.0,
    ),
)
# Legacy-authentication protocols password sprays go through.
AZURE_LEGACY_CLIENTS: tuple[str, ...] = (
    "IMAP4",
    "Authenticated SMTP",
    "Exchange ActiveSync",
    "POP3",
    "Other clients",
)

# Azure AD error codes (AADSTS) and their failureReason text.
AZURE_FAILURES: dict[int, str] = {
    50140: "This error occurred due to 'Keep me signed in' interrupt when the user was signing-in.",
    50074: "Strong Authentication is required.",
    50126: "Error validating credentials due to invalid username or password.",
    50089: "Flow token expired - Authentication Failed. Have the user try signing-in again with username "
    "-password.",
    50053: "Account is locked because user tried to sign in too many times with an incorrect user ID or "
    "password.",
    500121: "Authentication failed during strong authentication request.",
    53003: "Access has been blocked by Conditional Access policies. The access policy does not allow token "
    "issuance.",
    50076: "Due to a configuration change made by your administrator, or because you moved to a new location, "
    "you must use multi-factor authentication to access.",
}
AZURE_NORMAL_FAIL_CODES: tuple[int, ...] = (50140, 50074, 50126, 50089)
AZURE_SUCCESS_REASON = "Other."
AZURE_ADDITIONAL_DETAILS: dict[int, str] = {
    0: "MFA requirement satisfied by claim in the token",
    50140: "This can happen when the user signs in with 'Keep me signed in' and is normal.",
    50074: "The user was presented with a multi-factor authentication prompt.",
    50126: "The user didn't enter the right credentials. It's expected to see some number of these errors in "
    "your logs due to users making mistakes.",
}
