"""Built-in synthetic thyroid ultrasound ("phantom"): procedural B-mode images, fully annotated.

Every notebook and test runs on this generator, so nothing needs a download. An image is a
transverse neck scan (patient's right on the image left, skin at the top) of a synthetic patient:
skin, fat and muscles, the thyroid lobes and isthmus, the trachea with its air shadow and
reverberations, carotids, jugulars and the oesophagus (nodule look-alikes outside the gland), the
vertebra at depth, and 0..3 nodules inside the gland with ACR TI-RADS features and a
benign/malignant label drawn from the level's malignancy rate (Tessler et al., "ACR Thyroid
Imaging, Reporting and Data System (TI-RADS): White Paper of the ACR TI-RADS Committee", J Am
Coll Radiol 14:587-595, 2017). The package, one concern a module:

    tirads      the ACR point tables, ``tirads_points`` and ``tirads_level``
    config      ``PhantomConfig`` (scanner profile + case mix) and ``PROFILES``
    nodules     a nodule's features, size, look and label; ``nodule_overrides`` checks
    anatomy     the patient (layers, gland, trachea, vessels, muscles, bone), nodule placement,
                and the probe's views
    ultrasound  the scanner: tissue constants, speckle noise banks, the canvas, transmission along
                depth, depth gain, gamma, late artefacts, overlays
    render      paints each tissue of a view onto the canvas
    generate    ``sample``, ``batch``, ``gallery``
    export      TN3K / TG3K / DDTI folder layouts (``export``) and DDTI's original XML + TI-RADS
                release (``export_ddti_tirads``), so the file loaders read the phantom too

Each synthetic patient has one anatomy; ``views_per_patient`` consecutive indices are different
views of it (bilateral, one lobe, zoomed on the main nodule; pan, zoom and a few degrees of tilt,
fine texture redrawn, like a slightly different scan plane), so splits must be patient-wise.

Scanner profiles (``PROFILES``): "default"; "scanner_b" (coarser speckle, darker, stronger
attenuation, deeper field, gamma, overlays) for domain-shift experiments; "clean" (no speckle) for
figures. For a tour, ``sample(..., nodule_overrides={...})`` forces nodule features and
``gallery(feature=...)`` renders one image per category of a feature on the same patient.

    >>> from ssmt_lib.data import phantom
    >>> s = phantom.sample(0, seed=0)
    >>> s["image"].shape, s["nodule_mask"].dtype, s["tirads_level"] in range(6)
    ((224, 224), dtype('uint8'), True)
    >>> s = phantom.sample(5, nodule_overrides={"composition": "solid", "foci": "macro"})
    >>> s["nodules"][0]["foci"]
    'macro'
"""
from ssmt_lib.data.phantom.anatomy import VIEW_KINDS
from ssmt_lib.data.phantom.config import PROFILES, PhantomConfig
from ssmt_lib.data.phantom.export import (
    DDTI_FIELDS,
    DDTI_SPELLING,
    LAYOUT_FOLDERS,
    ddti_tirads_category,
    export,
    export_ddti_tirads,
)
from ssmt_lib.data.phantom.generate import batch, gallery, sample
from ssmt_lib.data.phantom.nodules import OVERRIDE_KEYS
from ssmt_lib.data.phantom.tirads import (
    ACR_MALIGNANCY_RISK,
    COMPOSITION_POINTS,
    ECHOGENICITY_POINTS,
    FEATURE_POINTS,
    FOCI_POINTS,
    MARGIN_POINTS,
    SHAPE_POINTS,
    tirads_level,
    tirads_points,
)

__all__ = [
    "ACR_MALIGNANCY_RISK", "COMPOSITION_POINTS", "DDTI_FIELDS", "DDTI_SPELLING",
    "ECHOGENICITY_POINTS", "FEATURE_POINTS", "FOCI_POINTS", "LAYOUT_FOLDERS", "MARGIN_POINTS",
    "OVERRIDE_KEYS", "PROFILES", "PhantomConfig", "SHAPE_POINTS", "VIEW_KINDS", "batch",
    "ddti_tirads_category", "export", "export_ddti_tirads", "gallery", "sample", "tirads_level",
    "tirads_points",
]
