"""The `etl` section of params.yaml (every key: `canopy params show etl`, docs/params.md)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field, field_validator, model_validator

from canopy.schema import TILE_SIZE_MAX, TILE_SIZE_MIN, StrictModel

BandRef = int | str  # 1-based band index, or a band name (GDAL description)

# Keys that say how a run goes, not what it makes: left out of the manifest's params_hash, so
# that the output is byte-identical whatever their values (dotted paths under `etl`).
RUN_ONLY_KEYS = (
    "workers", "sentinelhub.threads", "sentinelhub.max_retries", "sentinelhub.max_requests",
    "stac.threads", "stac.max_retries", "stac.max_requests", "stac.page_size", "stac.method",
    "worldcover.max_retries", "max_scene_megapixels", "max_read_mb",
)


class LocalEntry(StrictModel):
    """A `paths` entry with its own settings, for inputs that need other bands or scaling."""

    files: str | list[str]  # a file or glob, or a list of single-band files to stack
    bands: list[BandRef] | None = None  # default: etl.local.bands
    nir_band: BandRef | None = None  # default: etl.local.nir_band
    scale: Literal["auto", "none", "reflectance", "percentile"] | None = None  # default: etl.local.scale
    # Metres per pixel of these files: needed for a raster without a georeference (a plain
    # PNG) when etl.local.target_gsd is set; a georeferenced raster's own GSD is used otherwise.
    gsd: float | None = Field(None, gt=0.0)
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$")  # the tiles' `region` (a class for model.condition)

    @field_validator("bands")
    @classmethod
    def _three_bands(cls, bands: list[BandRef] | None) -> list[BandRef] | None:
        return None if bands is None else check_rgb_bands(bands)


def check_rgb_bands(bands: list[BandRef]) -> list[BandRef]:
    if len(bands) != 3:
        raise ValueError(f"give exactly 3 bands (red, green, blue), got {len(bands)}")
    for band in bands:
        if isinstance(band, int) and band < 1:
            raise ValueError(f"band indexes are 1-based, got {band}")
    return bands


class LocalParams(StrictModel):
    # Files or globs. An entry that is itself a list of single-band files is stacked into one
    # scene, in the order given (e.g. Landsat [B3, B2, B1]). An entry may also be a mapping
    # {files: ..., bands: ..., nir_band: ..., scale: ...} overriding the settings below.
    paths: list[str | list[str] | LocalEntry] = Field(default_factory=list)
    # Red, green, blue: 1-based band indexes or band names.
    bands: list[BandRef] = Field(default_factory=lambda: [1, 2, 3])
    # Near-infrared band for NDVI vegetation masking; null = use the RGB greenness index.
    nir_band: BandRef | None = None
    # How values become 8-bit: none (already 8-bit display values), reflectance (fixed
    # `etl.reflectance_range`), percentile (per-scene stretch), auto (by dtype: uint8 -> none,
    # float -> reflectance, other integers -> percentile).
    scale: Literal["auto", "none", "reflectance", "percentile"] = "auto"
    # Ground sample distance (metres per pixel) every raster is resampled to (average) before
    # tiling, e.g. 0.3 to mix 0.1 m orthophotos with other imagery; null keeps each raster's own.
    target_gsd: float | None = Field(None, gt=0.0)

    @field_validator("bands")
    @classmethod
    def _three_bands(cls, bands: list[BandRef]) -> list[BandRef]:
        return check_rgb_bands(bands)


class AoiParams(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")  # names the scene and its tiles
    bbox: tuple[float, float, float, float]  # min_lon, min_lat, max_lon, max_lat (WGS84)
    time: tuple[dt.date, dt.date]  # first and last day, inclusive
    max_cloud: float = Field(0.2, ge=0.0, le=1.0)  # the highest cloud cover of a scene used

    @field_validator("bbox")
    @classmethod
    def _valid_bbox(cls, bbox: tuple[float, float, float, float]) -> tuple[float, ...]:
        min_lon, min_lat, max_lon, max_lat = bbox
        for lon in (min_lon, max_lon):
            if not -180.0 <= lon <= 180.0:
                raise ValueError(f"longitude {lon} is outside [-180, 180]")
        for lat in (min_lat, max_lat):
            if not -90.0 <= lat <= 90.0:
                raise ValueError(f"latitude {lat} is outside [-90, 90]")
        if min_lon >= max_lon or min_lat >= max_lat:
            raise ValueError(
                f"bbox {list(bbox)} must be [min_lon, min_lat, max_lon, max_lat] "
                "with min < max (are two coordinates swapped?)"
            )
        return bbox

    @field_validator("time")
    @classmethod
    def _ordered_time(cls, time: tuple[dt.date, dt.date]) -> tuple[dt.date, dt.date]:
        if time[0] > time[1]:
            raise ValueError(f"time interval {time[0]} .. {time[1]} is reversed")
        return time


def _unique_aoi_names(aois: list[AoiParams]) -> list[AoiParams]:
    names = [aoi.name for aoi in aois]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"AOI names must be unique (they name the tiles); repeated: {repeated}")
    return aois


class SentinelHubParams(StrictModel):
    # Copernicus Data Space Ecosystem by default (free accounts); any Sentinel Hub deployment
    # works by changing both URLs. Credentials never go here: SH_CLIENT_ID/SH_CLIENT_SECRET
    # or the sentinelhub config profile.
    base_url: str = "https://sh.dataspace.copernicus.eu"
    # The OAuth2 token endpoint (CDSE's by default).
    token_url: str = (
        "https://identity.dataspace.copernicus.eu/auth/realms/CDSE/protocol/openid-connect/token"
    )
    profile: str | None = None  # sentinelhub config profile name (credentials only)
    resolution: float = Field(10.0, gt=0.0)  # metres per pixel
    # Areas of interest, each {name, bbox, time, max_cloud}; the names (unique) name the tiles.
    aois: list[AoiParams] = Field(default_factory=list)
    cache_dir: str = "data/cache/sentinelhub"  # downloads, kept so a re-run fetches nothing
    max_retries: int = Field(4, ge=0, le=20)  # on 429 and 5xx answers
    # Process API requests in flight at once. A 429 pauses them all until its Retry-After.
    threads: int = Field(4, ge=1, le=64)
    # Refuse to start more downloads than this (cached requests do not count): a mistyped
    # bbox can plan a whole continent. Raise it on purpose for large areas.
    max_requests: int = Field(2000, ge=1)

    @field_validator("aois")
    @classmethod
    def _unique_names(cls, aois: list[AoiParams]) -> list[AoiParams]:
        return _unique_aoi_names(aois)

    @field_validator("base_url", "token_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("https://", "http://")):
            raise ValueError(f"{url!r} is not an http(s) URL")
        return url.rstrip("/")


class StacParams(StrictModel):
    # The STAC API of Sentinel-2 L2A cloud-optimised GeoTIFFs (no account, no credentials):
    # earth-search (Element84 Earth Search v1, collection sentinel-2-c1-l2a, public HTTPS) or
    # planetary-computer (Microsoft's, sentinel-2-l2a, assets signed with anonymous tokens).
    catalog: Literal["earth-search", "planetary-computer"] = "earth-search"
    api_url: str | None = None  # null: the catalog's; set for a mirror or another STAC API
    collection: str | None = None  # null: the catalog's
    # Areas of interest, each {name, bbox, time, max_cloud}; the names (unique) name the tiles.
    aois: list[AoiParams] = Field(default_factory=list)
    # Scenes kept per AOI and Sentinel-2 grid tile (MGRS): the least cloudy, then the earliest.
    items_per_aoi: int = Field(1, ge=1, le=100)
    cache_dir: str = "data/cache/stac"  # search answers and windows: a re-run sends nothing
    method: Literal["POST", "GET"] = "POST"  # search requests (a few APIs take only GET)
    page_size: int = Field(100, ge=1, le=100)  # items per search page; APIs answer more with 502
    max_retries: int = Field(4, ge=0, le=20)  # on 429, 5xx and broken transfers
    threads: int = Field(8, ge=1, le=64)  # window reads in flight at once
    # Refuse to start more window reads than this (cached scenes do not count): a mistyped
    # bbox can plan a whole continent. Raise it on purpose for large areas.
    max_requests: int = Field(2000, ge=1)

    @field_validator("aois")
    @classmethod
    def _unique_names(cls, aois: list[AoiParams]) -> list[AoiParams]:
        return _unique_aoi_names(aois)

    @field_validator("api_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("https://", "http://")):
            raise ValueError(f"{url!r} is not an http(s) URL")
        return None if url is None else url.rstrip("/")


class WorldCoverParams(StrictModel):
    # ESA WorldCover 10 m 2021 v200: the URL template of its 3x3-degree COGs, named by their
    # south-west corner ({tile} = N45E006); a mirror or a local copy works by changing it.
    url: str = ("https://esa-worldcover.s3.eu-central-1.amazonaws.com/v200/2021/map/"
                "ESA_WorldCover_10m_2021_v200_{tile}_Map.tif")
    cache_dir: str = "data/cache/worldcover"  # tree-cover masks, one per scene grid
    max_retries: int = Field(4, ge=0, le=20)  # on 429, 5xx and broken transfers

    @field_validator("url")
    @classmethod
    def _has_tile(cls, url: str) -> str:
        if "{tile}" not in url:
            raise ValueError(f"{url!r} has no {{tile}} placeholder (e.g. ..._{{tile}}_Map.tif)")
        return url


class SyntheticParams(StrictModel):
    # Procedural forest-like scenes for the offline demo. Output is labelled synthetic.
    scenes: int = Field(2, ge=1, le=1000)  # number of scenes (the demo: 4)
    width: int = Field(1024, ge=16, le=20000)  # scene width in pixels
    height: int = Field(1024, ge=16, le=20000)  # scene height in pixels
    # Scene i is of kind i mod the kinds, and its tiles' region (a class for model.condition):
    # mixed (the demo's scenes), broadleaf (large round bright crowns), conifer (small dark
    # conical crowns), open (scattered crowns over grass).
    kinds: list[Literal["mixed", "broadleaf", "conifer", "open"]] = Field(
        default_factory=lambda: ["mixed"], min_length=1)

    @field_validator("kinds")
    @classmethod
    def _distinct_kinds(cls, kinds: list[str]) -> list[str]:
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"etl.synthetic.kinds repeats a kind: {kinds}")
        return kinds


class EtlParams(StrictModel):
    # Where the imagery comes from: stac (Sentinel-2 L2A from a public STAC catalog, no
    # account: etl.stac), sentinelhub (Sentinel-2 L2A, an account), local (rasters on disk:
    # etl.local) or synthetic (drawn scenes for the offline demo, labelled as such).
    source: Literal["sentinelhub", "stac", "local", "synthetic"] = "synthetic"
    # tile side in pixels (the demo: 64)
    tile_size: int = Field(128, ge=TILE_SIZE_MIN, le=TILE_SIZE_MAX)
    stride: int = Field(128, ge=1)  # step between tiles: < tile_size overlaps them
    # Share of tiles held out for evaluation, chosen by hashing each tile's key.
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    shard_size: int = Field(1000, ge=1)  # tiles per tar shard
    min_valid_fraction: float = Field(0.9, ge=0.0, le=1.0)  # 0 disables the filter
    min_vegetation_fraction: float = Field(0.5, ge=0.0, le=1.0)  # 0 disables the filter
    # Share of a tile's pixels ESA WorldCover calls tree cover (class 10); 0 disables the
    # filter (and the WorldCover reads). Needs georeferenced scenes.
    min_tree_cover: float = Field(0.0, ge=0.0, le=1.0)
    # Vegetation tests (docs/commands.md "canopy etl"): NDVI > ndvi_threshold when a NIR band is
    # given, else the RGB Green Leaf Index GLI = (2G - R - B) / (2G + R + B) > gli_threshold.
    ndvi_threshold: float = Field(0.3, ge=-1.0, le=1.0)
    gli_threshold: float = Field(0.02, ge=-1.0, le=1.0)  # GLI above which a pixel is vegetation
    # Scaling to 8-bit (docs/data.md "Scaling to 8-bit"). reflectance_range is in the data's own units
    # (e.g. [0, 3000] for Sentinel-2 L2A stored as uint16 x 10000).
    reflectance_range: tuple[float, float] = (0.0, 0.3)
    gamma: float = Field(1.0, gt=0.0, le=5.0)  # applied after the linear map: out = x ** (1/gamma)
    percentile_range: tuple[float, float] = (2.0, 98.0)  # mapped to 0..255 by percentile scaling
    workers: int = Field(0, ge=0, le=256)  # PNG encoding processes; 0 = all cores
    # refuse an input raster claiming more pixels (width x height / 1e6): a 7 MB sparse file can
    # claim 200000 x 200000 pixels, minutes of reading
    max_scene_megapixels: float = Field(2500.0, gt=0.0)
    # refuse a raster decoded from its top (PNG, JPEG, full-width TIFF strips), read a
    # full-width row of tiles at a time, when that row needs more memory (MB)
    max_read_mb: int = Field(1024, ge=16)
    preview_tiles: int = Field(64, ge=0, le=1024)  # tiles in preview.png (0: none)
    local: LocalParams = Field(default_factory=LocalParams)  # source local: the rasters
    # source sentinelhub: the service, the areas and the downloads
    sentinelhub: SentinelHubParams = Field(default_factory=SentinelHubParams)
    stac: StacParams = Field(default_factory=StacParams)  # source stac: the catalog and areas
    # etl.min_tree_cover: where ESA WorldCover is read from, and its cache
    worldcover: WorldCoverParams = Field(default_factory=WorldCoverParams)
    synthetic: SyntheticParams = Field(default_factory=SyntheticParams)  # source synthetic

    @model_validator(mode="after")
    def _consistent(self) -> EtlParams:
        if self.stride > self.tile_size:
            raise ValueError(
                f"etl.stride ({self.stride}) is larger than etl.tile_size ({self.tile_size}): "
                "pixels between tiles would be skipped; use stride <= tile_size"
            )
        lo, hi = self.reflectance_range
        if not lo < hi:
            raise ValueError(f"etl.reflectance_range {[lo, hi]} must be [low, high] with low < high")
        plo, phi = self.percentile_range
        if not 0.0 <= plo < phi <= 100.0:
            raise ValueError(
                f"etl.percentile_range {[plo, phi]} must satisfy 0 <= low < high <= 100"
            )
        if self.source == "local" and not self.local.paths:
            raise ValueError("etl.source is 'local' but etl.local.paths is empty: list files or globs")
        if self.source == "sentinelhub" and not self.sentinelhub.aois:
            raise ValueError(
                "etl.source is 'sentinelhub' but etl.sentinelhub.aois is empty: "
                "add {name, bbox, time, max_cloud} entries"
            )
        if self.source == "stac" and not self.stac.aois:
            raise ValueError(
                "etl.source is 'stac' but etl.stac.aois is empty: "
                "add {name, bbox, time, max_cloud} entries"
            )
        if self.source == "synthetic" and self.min_tree_cover > 0:
            raise ValueError(
                "etl.min_tree_cover needs georeferenced scenes, and synthetic scenes have none: "
                "set etl.min_tree_cover: 0 or choose the stac, sentinelhub or local source"
            )
        return self
