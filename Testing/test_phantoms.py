"""The synthetic phantoms are realistic enough to test with: tissue values, labels, geometry, determinism."""

import numpy as np

from unetseg import phantoms


def _is_oblique(direction) -> bool:
    m = np.asarray(direction).reshape(3, 3)
    return not np.allclose(np.abs(m), np.round(np.abs(m)))


def test_ct_phantom_has_hounsfield_tissues_and_labels(ct_case):
    ct, labels = ct_case
    hu, lab = ct.array, labels.array
    assert np.median(hu[lab == 3]) < -800  # lung
    assert 120 < np.median(hu[lab == 1]) < 180  # contrast-enhanced organ
    assert np.median(hu[lab == 4]) >= 700  # bone
    assert np.median(hu[(lab == 0) & (hu < -900)]) < -950  # air outside the body
    assert 0 < (lab == 2).sum() < (lab == 1).sum() / 4  # a small lesion inside the organ
    assert set(np.unique(lab)) == {0, 1, 2, 3, 4} == {0} | {label.value for label in phantoms.CT_LABELS}


def test_phantom_geometry_is_anisotropic_offset_and_oblique(ct_case, mri_case):
    for image in (ct_case[0], mri_case[0][0]):
        assert len(set(image.spacing)) > 1
        assert any(o != 0 for o in image.origin)
        assert _is_oblique(image.direction)
    assert np.linalg.det(ct_case[0].direction_matrix) < 0  # flipped axis


def test_mri_phantom_sequences_differ_in_contrast(mri_case):
    images, labels = mri_case
    assert len(images) == 2 and all(im.same_grid(labels) for im in images)
    t1, t2 = (im.array for im in images)
    lesion = labels.array == 1
    brain = (labels.array == 0) & (t1 > 100)
    assert t1[lesion].mean() < t1[brain].mean() and t2[lesion].mean() > t2[brain].mean()


def test_xray_phantom_is_one_slice_with_two_lung_fields(xray_case):
    image, labels = xray_case
    assert image.is_single_slice and image.shape[0] == 1
    assert {1, 2} <= set(np.unique(labels.array))
    assert image.array[labels.array > 0].mean() < image.array[(labels.array == 0) & (image.array > 0.4)].mean()


def test_phantoms_are_deterministic_by_seed():
    a, _ = phantoms.ct_phantom(seed=3)
    b, _ = phantoms.ct_phantom(seed=3)
    c, _ = phantoms.ct_phantom(seed=4)
    assert np.array_equal(a.array, b.array) and not np.array_equal(a.array, c.array)
